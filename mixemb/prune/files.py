"""One file per pruned mixemb model: ``save_pruned`` / ``load_pruned``.

The file is :mod:`mixemb.prune.model_file`'s layout (written by its ``serialize``, read by
its ``restore``: the ragged table, the rest of the state, every check) under kind
"mixemb.pruned", plus the model config it is rebuilt from and what the caller adds
(encoder state, dataset spec, prune report numbers)::

    {"kind": "mixemb.pruned", "format_version", "tables", "state",
     "model_config": model.config, **extra}

A file of the earlier layout (no ``format_version``; ``dense_state`` and one ``table``)
still loads.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mixemb.models import build_model
from mixemb.nn import RaggedEmbedding
from mixemb.prune.finetune import WeightsMismatch, on_embedding
from mixemb.prune.model_file import restore, serialize
from mixemb.ragged import RaggedTable
from mixemb.train.checkpoint import CheckpointError, atomic_save, load_checkpoint
from mixemb.train.saved import check_model_config

PRUNED_KIND = "mixemb.pruned"
_LAYOUT_KEYS = ("kind", "format_version", "tables", "state", "model_config")


def save_pruned(model: nn.Module, path: str | Path, **extra) -> Path:
    """Write a RaggedEmbedding-backed mixemb model to one file (atomic, weights_only-safe).

    extra: JSON/tensor-only entries (encoder state, dataset spec, prune report numbers),
        stored beside the model; none may be named like a layout entry.
    """
    emb = model.embedding
    if not isinstance(emb, RaggedEmbedding):
        raise TypeError(f"save_pruned needs a RaggedEmbedding model, got {type(emb).__name__}")
    taken = sorted(set(extra) & set(_LAYOUT_KEYS))
    if taken:
        raise ValueError(f"extra entry {taken[0]!r} is a layout entry of the pruned file")
    body = {"kind": PRUNED_KIND, **serialize(model), "model_config": dict(model.config)}
    return atomic_save({**body, **extra}, path)


def load_pruned(path: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild a model saved by :func:`save_pruned`; returns (model in eval mode, file dict).

    The model config must describe the file's table and weights exactly; the model is
    built from it on the meta device and the file restored into it (every table and weight
    checked before the model is touched). Raises CheckpointError.
    """
    obj = load_checkpoint(path, kind=PRUNED_KIND)
    if "format_version" not in obj:
        return _load_first_layout(path, obj)
    tables = obj.get("tables")
    entry = tables.get("embedding") if isinstance(tables, dict) else None
    table = entry.get("table") if isinstance(entry, dict) else None
    masks = table.get("masks") if isinstance(table, dict) else None
    if not isinstance(masks, torch.Tensor) or masks.dim() != 2:
        raise CheckpointError(f"{path}: damaged pruned model (no embedding table)")
    shape = (masks.shape[0], table.get("embedding_dim"))
    config = check_model_config(path, obj.get("model_config"), obj.get("state"), shape)
    name = config.pop("name")
    with torch.device("meta"):
        model = build_model(name, **config)
    return restore(path, obj, model).eval(), obj


def _load_first_layout(path: str | Path, obj: dict) -> tuple[nn.Module, dict]:
    """:func:`load_pruned` of a file of the earlier layout (``dense_state`` and ``table``)."""
    dense = obj.get("dense_state")
    if isinstance(dense, dict):
        onto_table = sorted(
            k for k in dense if not isinstance(k, str) or k.startswith("embedding.")
        )
        if onto_table:
            raise CheckpointError(
                f"{path}: dense weights {str(onto_table[0])[:80]!r} would overwrite the "
                "ragged table; not written by mixemb prune"
            )
    try:
        table = RaggedTable.from_state_dict(obj["table"])
    except (KeyError, ValueError, RuntimeError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{path}: damaged pruned model ({exc})") from exc
    shape = (table.num_embeddings, table.embedding_dim)
    config = check_model_config(path, obj.get("model_config"), dense, shape)
    try:
        # rows in float32 whatever the stored dtype: mixemb's models compute in float32
        model = on_embedding(config, RaggedEmbedding(table, out_dtype=torch.float32), dense)
    except WeightsMismatch:
        raise CheckpointError(f"{path}: weights do not fit the saved model config") from None
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise CheckpointError(f"{path}: damaged pruned model ({exc})") from exc
    return model.eval(), obj
