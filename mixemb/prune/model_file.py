"""One file for any model served from ragged tables: ``save`` / ``load``.

``save(model, path)`` writes every :class:`RaggedEmbedding` / :class:`RaggedEmbeddingBag`
of ``model`` (at any qualified name) as its table's state plus the module's options, and
the rest of ``model.state_dict()``, to one ``weights_only``-safe file (written
atomically). ``load(path, model)`` takes a freshly constructed model of the same class —
with plain ``nn.Embedding`` / ``nn.EmbeddingBag`` modules at those names — swaps those
modules for ragged ones holding the file's tables and loads the rest of the state. Built
under ``torch.device("meta")``, the model never allocates its dense tables: ``load``
builds the ragged ones on the CPU (or ``device``) and takes the rest of the state from the
file as it is (``load_state_dict(..., assign=True)``).

File layout (``kind`` "mixemb.ragged_model", ``format_version`` 1)::

    {"kind", "format_version",
     "tables": {name: {"module": "embedding" | "embedding_bag",
                       "options": {} | {"mode", "padding_idx", "include_last_offset"},
                       "table": RaggedTable.state_dict()}},
     "state": {key: tensor}}    # model.state_dict() without the tables' buffers

Other kinds share this layout (:func:`serialize` writes it, :func:`restore` reads it): a
file of ``mixemb prune`` (``mixemb.prune.files``) adds the model config and what scores it.

A file is untrusted input: every table is validated in full (``RaggedTable.from_state_dict``)
and must have the size of the model's module it replaces, and the rest of the state must
have exactly the model's keys and shapes — all before the model is touched. Anything else
is a one-line :class:`~mixemb.train.checkpoint.CheckpointError` (a ValueError) naming the
file.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mixemb.nn.ragged import RaggedEmbedding
from mixemb.nn.ragged_bag import MODES, RaggedEmbeddingBag
from mixemb.ragged import RaggedTable
from mixemb.train.checkpoint import CheckpointError, atomic_save, first_line, load_checkpoint

MODEL_KIND = "mixemb.ragged_model"
MODEL_FORMAT_VERSION = 1
_BAG_OPTIONS = ("mode", "padding_idx", "include_last_offset")


def save(model: nn.Module, path: str | Path) -> Path:
    """Write ``model`` — its ragged tables and the rest of its state — to ``path``
    (atomic, loadable with ``torch.load(weights_only=True)``); returns the path.

    Raises ValueError when ``model`` holds no RaggedEmbedding / RaggedEmbeddingBag (prune
    it with ``to_ragged`` first) or is one itself (its class could not be rebuilt).
    """
    return atomic_save({"kind": MODEL_KIND, **serialize(model)}, path)


def serialize(model: nn.Module) -> dict:
    """The layout entries of ``model`` (``format_version``, ``tables``, ``state``), the part
    of every file :func:`restore` reads, whatever its ``kind``; raises ValueError as
    :func:`save` does."""
    tables = ragged_modules(model)
    if not tables:
        raise ValueError(
            f"{type(model).__name__} holds no RaggedEmbedding or RaggedEmbeddingBag: "
            "call to_ragged(model, ...) before save"
        )
    if "" in tables:
        raise ValueError("model is itself a ragged table; save the model that holds it")
    entries = {}
    for name, module in tables.items():
        bag = isinstance(module, RaggedEmbeddingBag)
        options = {key: getattr(module, key) for key in _BAG_OPTIONS} if bag else {}
        entries[name] = {
            "module": "embedding_bag" if bag else "embedding",
            "options": options,
            "table": module.table.state_dict(),
        }
    names = _aliases(model, tables)  # a table shared under several names: every one
    state = {
        key: value for key, value in model.state_dict().items() if _table_of(key, names) is None
    }
    return {"format_version": MODEL_FORMAT_VERSION, "tables": entries, "state": state}


def load(
    path: str | Path, model: nn.Module, *, device: torch.device | str | None = None
) -> nn.Module:
    """Load a file written by :func:`save` into ``model``, a freshly constructed instance
    of the saved model's class, and return it: each module named in the file (an
    ``nn.Embedding`` / ``nn.EmbeddingBag`` of the same size and options, or a ragged one)
    is replaced in place by a ragged module holding the file's table; every other weight
    is loaded from the file (strict: the same keys and shapes).

    ``model`` may be built under ``torch.device("meta")`` (no dense table is allocated):
    its parameters and buffers are then the file's tensors themselves
    (``load_state_dict(..., assign=True)``), on ``device``; a tensor the file does not
    hold (a non-persistent buffer) left on the meta device is a ValueError.

    device: where the ragged tables (and, for a model on the meta device, the rest of its
        state) go; default None: the device of the module replaced, the CPU for the meta
        device. A model not on the meta device keeps its other tensors where they are.

    Raises CheckpointError (a ValueError) naming ``path`` for a missing, damaged, foreign
    or mismatched file, found before ``model`` is touched.
    """
    return restore(path, load_checkpoint(path, kind=MODEL_KIND), model, device=device)


def restore(
    path: str | Path, obj: dict, model: nn.Module, *, device: torch.device | str | None = None
) -> nn.Module:
    """:func:`load` of ``obj``, a file dict read from ``path`` (any ``kind``) holding the
    entries :func:`serialize` writes: ``path`` only names the file in errors."""
    device = None if device is None else torch.device(device)
    if device is not None and device.type == "meta":
        raise ValueError("device must be a real device, got meta")
    if obj.get("format_version") != MODEL_FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: unsupported model file format version {obj.get('format_version')!r}"
        )
    entries, state = obj.get("tables"), obj.get("state")
    if not isinstance(entries, dict) or not entries or not isinstance(state, dict):
        raise CheckpointError(f"{path}: damaged model file (no tables or no state)")
    modules = dict(model.named_modules())
    built = {}
    # the file's tensors are on the CPU; what is built from them too, even when load is
    # called inside the torch.device("meta") block that built the model
    with torch.device("cpu"):
        for name, entry in entries.items():
            try:
                built[name] = _build(name, entry, modules, device)
            except (ValueError, TypeError, KeyError, RuntimeError, OverflowError) as exc:
                raise CheckpointError(
                    f"{path}: table {str(name)[:80]!r}: {first_line(exc)}"
                ) from None
    names = _aliases(model, {name: modules[name] for name in built})
    _check_state(path, state, model, names)
    meta = _meta_tensors(model, names)
    if meta:
        left = sorted(set(meta) - set(state))
        if left:
            raise ValueError(
                f"{type(model).__name__}.{left[0]} is on the meta device and not in {path} "
                "(a non-persistent buffer?): build the model on a real device"
            )
        where = device or torch.device("cpu")
        state = {key: value.to(where) for key, value in state.items()}
    # _check_state proved the state holds exactly the keys outside the tables; loaded
    # before the swap, it leaves the modules being replaced (and their tables) untouched
    try:
        model.load_state_dict(state, strict=False, assign=bool(meta))
    except (RuntimeError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: the state does not load: {first_line(exc)}") from None
    for name, first in names.items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, built[first])
    return model


def _meta_tensors(model: nn.Module, tables: dict) -> list[str]:
    """State-dict-style names of ``model``'s parameters and buffers on the meta device,
    outside the tables being replaced (named by ``tables``' keys)."""
    tensors = [
        *model.named_parameters(remove_duplicate=False),
        *model.named_buffers(remove_duplicate=False),
    ]
    return [key for key, t in tensors if t.is_meta and _table_of(key, tables) is None]


def ragged_modules(model: nn.Module) -> dict[str, RaggedEmbedding]:
    """Qualified name → every RaggedEmbedding / RaggedEmbeddingBag of ``model``."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, RaggedEmbedding)
    }


def _build(
    name, entry, modules: dict[str, nn.Module], device: torch.device | None
) -> RaggedEmbedding:
    """The ragged module of one file entry, checked against the module it replaces, on
    ``device`` (None: that module's; the CPU for the meta device)."""
    if not isinstance(name, str) or not name:
        raise ValueError("not a submodule name")
    if not isinstance(entry, dict) or not isinstance(entry.get("table"), dict):
        raise ValueError("entry must be a dict holding a table state")
    kind, options = entry.get("module"), entry.get("options")
    if kind not in ("embedding", "embedding_bag"):
        raise ValueError(f"module must be 'embedding' or 'embedding_bag', got {kind!r}")
    bag = kind == "embedding_bag"
    target = modules.get(name)
    wanted = (nn.EmbeddingBag, RaggedEmbeddingBag) if bag else (nn.Embedding, RaggedEmbedding)
    if not isinstance(target, wanted) or (not bag and isinstance(target, RaggedEmbeddingBag)):
        found = "no such module" if target is None else f"a {type(target).__name__}"
        raise ValueError(
            f"the model has no nn.{'EmbeddingBag' if bag else 'Embedding'} there ({found})"
        )
    # the sizes are the model's: a crafted size is refused before anything is allocated
    dim = entry["table"].get("embedding_dim")
    if dim != target.embedding_dim:
        raise ValueError(
            f"embedding_dim is {dim!r} in the file, {target.embedding_dim} in the model"
        )
    table = RaggedTable.from_state_dict(entry["table"])
    if table.num_embeddings != target.num_embeddings:
        raise ValueError(
            f"{table.num_embeddings} rows in the file, {target.num_embeddings} in the model"
        )
    if not bag:
        if options:
            raise ValueError(f"an embedding takes no options, got {str(options)[:80]}")
        return RaggedEmbedding(table, out_dtype=_out_dtype(target)).to(device or _device(target))
    _check_bag_options(options, target)
    module = RaggedEmbeddingBag(table, **options, out_dtype=_out_dtype(target))
    return module.to(device or _device(target))


def _out_dtype(target: nn.Module) -> torch.dtype | None:
    """The dtype the module that ``target`` was returns: its weight's, or a ragged one's."""
    return target.out_dtype if isinstance(target, RaggedEmbedding) else target.weight.dtype


def _check_bag_options(options, target: nn.Module) -> None:
    """ValueError unless ``options`` are valid bag options equal to ``target``'s."""
    if not isinstance(options, dict) or set(options) != set(_BAG_OPTIONS):
        raise ValueError(f"options must hold {list(_BAG_OPTIONS)}, got {str(options)[:80]}")
    mode, padding_idx, last = (options[key] for key in _BAG_OPTIONS)
    if (
        mode not in MODES
        or not (padding_idx is None or type(padding_idx) is int)
        or type(last) is not bool
    ):
        raise ValueError(f"bad options {str(options)[:80]}")
    for key in _BAG_OPTIONS:
        if options[key] != getattr(target, key):
            raise ValueError(
                f"{key}={options[key]!r} in the file, {getattr(target, key)!r} in the model"
            )


def _check_state(path, state: dict, model: nn.Module, tables: dict) -> None:
    """CheckpointError unless ``state`` has exactly the keys and tensor shapes of
    ``model``'s state outside the tables being replaced (named by ``tables``' keys)."""
    expected = {k: v for k, v in model.state_dict().items() if _table_of(k, tables) is None}
    onto_table = sorted(str(k) for k in state if not isinstance(k, str) or _table_of(k, tables))
    if onto_table:
        raise CheckpointError(
            f"{path}: state key {onto_table[0][:80]!r} would overwrite the ragged table"
        )
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        what = f"lacks {missing[0]!r}" if missing else f"has unexpected {unexpected[0][:80]!r}"
        raise CheckpointError(
            f"{path}: the state does not fit the model: it {what} "
            f"({len(missing)} missing, {len(unexpected)} unexpected)"
        )
    for key, want in expected.items():
        got = state[key]
        if isinstance(want, torch.Tensor) and (
            not isinstance(got, torch.Tensor) or got.shape != want.shape
        ):
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise CheckpointError(
                f"{path}: {key!r} is {shape} in the file, {tuple(want.shape)} in the model"
            )


def _aliases(model: nn.Module, tables: dict[str, nn.Module]) -> dict[str, str]:
    """Every name under which a module of ``tables`` (name → module) sits in ``model`` →
    that module's name in ``tables``."""
    first = {id(module): name for name, module in tables.items()}
    return {
        name: first[id(module)]
        for name, module in model.named_modules(remove_duplicate=False)
        if id(module) in first
    }


def _table_of(key, tables: dict) -> str | None:
    """The name of the table whose buffer ``key`` is, or None."""
    if not isinstance(key, str):
        return None
    return next((name for name in tables if key.startswith(name + ".")), None)


def _device(module: nn.Module) -> torch.device:
    """The device of ``module``'s first tensor: the CPU for none or the meta device."""
    tensor = next(module.parameters(), None)
    if tensor is None:
        tensor = next(module.buffers(), None)
    if tensor is None or tensor.is_meta:
        return torch.device("cpu")
    return tensor.device
