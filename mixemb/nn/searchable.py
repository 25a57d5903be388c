"""Searchable twins of ``nn.Embedding`` and ``nn.EmbeddingBag``, and ``searchable(model)``.

A twin keeps the original module's weight (the same ``nn.Parameter``), forward signature
and semantics, and scales every looked-up row by its block's soft selection row before
any pooling::

    row(id) = weight[id] ⊙ alpha[block_map[id]]

Blocks come from a per-id ``block_map``, so a user's ids need not be renumbered by
frequency: ``set_frequencies(counts)`` ranks the ids by count and splits the ranks into
``num_blocks`` near-equal blocks (block 0 the most frequent). The lookup × α is
``mixemb.ops.soft_select_lookup`` (its α gradient normalized per block row, DNIS's); a
bag of mode "sum" or "mean" is one ``mixemb.ops.soft_select_bag`` call (lookup × α and
pooling fused, the same normalized α gradient), "max" the lookup op then ``pool``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from mixemb.nn.soft_select import TableShape
from mixemb.ops import soft_select_bag, soft_select_lookup
from mixemb.ops.soft_select import check_block_map
from mixemb.ops.soft_select_pooled import bag_of_lookups, check_offsets

Tensor = torch.Tensor
MODES = ("sum", "mean", "max")


def _rank_blocks(counts: Tensor, num_blocks: int) -> Tensor:
    """(N,) int64 block of every id: ids ranked by descending count (ties: lower id
    first), ranks split into ``num_blocks`` near-equal blocks, larger first."""
    n = counts.numel()
    base, extra = divmod(n, num_blocks)
    sizes = torch.full((num_blocks,), base, dtype=torch.int64, device=counts.device)
    sizes[:extra] += 1
    ends = torch.cumsum(sizes, 0)
    order = torch.argsort(counts, descending=True, stable=True)
    rank_block = torch.searchsorted(ends, torch.arange(n, device=counts.device), right=True)
    return torch.empty_like(rank_block).index_copy_(0, order, rank_block)


class _Searchable(TableShape, nn.Module):
    """What every twin shares: α, the block map, frequencies, the merged table."""

    #: the original module's options (beyond the table's) that ``from_module`` copies
    _OPTIONS: tuple[str, ...] = ()

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        num_blocks: int = 10,
        *,
        padding_idx: int | None = None,
        weight: nn.Parameter | None = None,
        normalize: bool = True,
        l1: float = 0.0,
        eps: float = 1e-8,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        n, k = num_embeddings, embedding_dim
        if padding_idx is not None:
            if not -n <= padding_idx < n:
                raise ValueError(f"padding_idx must be in [-{n}, {n}), got {padding_idx}")
            padding_idx = padding_idx % n
        self.weight = _table(n, k, padding_idx, weight)
        device, dtype = self.weight.device, self.weight.dtype
        self.alpha = nn.Parameter(torch.ones(num_blocks, k, dtype=dtype, device=device))
        self.register_buffer("block_map", torch.zeros(n, dtype=torch.int64, device=device))
        self.register_buffer("has_frequencies", torch.tensor(False, device=device))
        self.padding_idx = padding_idx
        self.normalize, self.l1, self.eps, self.backend = normalize, l1, eps, backend

    @classmethod
    def from_module(cls, module: nn.Module, num_blocks: int = 10):
        """The twin of ``module`` (an nn.Embedding for SearchableEmbedding, an
        nn.EmbeddingBag for SearchableEmbeddingBag), sharing its weight Parameter."""
        _check_supported(module, type(module).__name__)
        n, k = module.weight.shape
        options = {name: getattr(module, name) for name in cls._OPTIONS}
        return cls(n, k, num_blocks, padding_idx=module.padding_idx, weight=module.weight,
                   **options)  # fmt: skip

    def set_frequencies(self, counts: Tensor | Sequence[float]) -> None:
        """Set the block map from per-id counts (N,) int/float; α is left as it is."""
        c = torch.as_tensor(counts)
        if c.shape != (self.num_embeddings,) or c.dtype == torch.bool or c.is_complex():
            raise ValueError(
                f"counts must be ({self.num_embeddings},) int/float, got {tuple(c.shape)} {c.dtype}"
            )
        blocks = _rank_blocks(c.to(self.block_map.device), self.num_blocks)
        with torch.no_grad():
            self.block_map.copy_(blocks)
            self.has_frequencies.fill_(True)

    def merged_weight(self) -> Tensor:
        """(N, K) weight ⊙ alpha[block_map] in promote_types(weight, alpha), detached: the
        table the twin's lookups see (the padding row as stored, unscaled)."""
        with torch.no_grad():
            merged = self.weight * self.alpha[self.block_map]
            if self.padding_idx is not None:
                merged[self.padding_idx] = self.weight[self.padding_idx]
        return merged

    def _rows(self, ids: Tensor, values: Tensor | None = None) -> Tensor:
        """(*ids.shape, K) = weight[ids] ⊙ alpha[block_map[ids]] (⊙ values)."""
        return soft_select_lookup(
            self.weight, self.alpha, None, ids, values, block_map=self.block_map,
            normalize=self.normalize, l1=self.l1, eps=self.eps, backend=self.backend,
        )  # fmt: skip

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # checked here, once: the CUDA forward cannot read the map without a host sync
        m = state_dict.get(prefix + "block_map")
        if isinstance(m, Tensor):
            try:
                check_block_map(m, self.num_embeddings, self.num_blocks)
            except ValueError as err:
                raise ValueError(f"{prefix}block_map in the state: {err}") from None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _search_repr(self) -> str:
        pad = "" if self.padding_idx is None else f", padding_idx={self.padding_idx}"
        return (
            f"{self.num_embeddings}, {self.embedding_dim}, blocks={self.num_blocks}{pad}, "
            f"normalize={self.normalize}, l1={self.l1}, backend={self.backend!r}"
        )


class SearchableEmbedding(_Searchable):
    """``nn.Embedding`` twin: ``forward(input (...) int) -> (..., K)``, each row × α[block].

    weight: (N, K) float, the table (an existing ``nn.Parameter`` is kept as is; None makes
    one initialized like nn.Embedding's). alpha: (L, K) ones; block_map: (N,) int64
    buffer, zeros until ``set_frequencies``. padding_idx: that id's output is its weight
    row, unscaled, and it gets no gradient (as nn.Embedding). normalize, l1, eps: α's
    gradient post-processing (see ``soft_select_lookup``). backend: the op's.
    """

    def forward(self, input: Tensor) -> Tensor:
        out = self._rows(input)
        if self.padding_idx is None:
            return out
        pad_row = self.weight[self.padding_idx].detach().to(out.dtype)
        return torch.where((input == self.padding_idx).unsqueeze(-1), pad_row, out)

    def extra_repr(self) -> str:
        return self._search_repr()


class SearchableEmbeddingBag(_Searchable):
    """``nn.EmbeddingBag`` twin: ``forward(input, offsets=None, per_sample_weights=None)
    -> (B, K)``, each looked-up row × α[block] (× its per-sample weight), then pooled.

    input: (n,) int32/int64 with offsets (B,) (or (B+1,) with include_last_offset) giving
    where each bag starts, or (B, S) int for B bags of S ids (offsets None).
    per_sample_weights: like input, float, mode "sum" only. mode: "sum", "mean" or "max";
    padding_idx entries are left out of their bag (and of mean's count); an empty bag is
    zeros. Other arguments as ``SearchableEmbedding``.
    """

    _OPTIONS = ("mode", "include_last_offset")

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        num_blocks: int = 10,
        *,
        mode: str = "mean",
        include_last_offset: bool = False,
        **options,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        super().__init__(num_embeddings, embedding_dim, num_blocks, **options)
        self.mode, self.include_last_offset = mode, include_last_offset

    def forward(
        self,
        input: Tensor,
        offsets: Tensor | None = None,
        per_sample_weights: Tensor | None = None,
    ) -> Tensor:
        check_per_sample_weights(self.mode, input, per_sample_weights)
        ids, ends = self._bag_offsets(input, offsets)
        psw = None if per_sample_weights is None else per_sample_weights.reshape(-1)
        if self.mode == "max":  # no fused max: the lookup op, then pooling
            check_offsets(ends, ids.numel())
            bags = bag_of_lookups(ids, ends, self.padding_idx)
            return pool(self._rows(ids), bags, ends.numel() - 1, "max")
        return soft_select_bag(
            self.weight, self.alpha, None, ids, ends, psw, block_map=self.block_map,
            mode=self.mode, padding_idx=self.padding_idx, normalize=self.normalize, l1=self.l1,
            eps=self.eps, backend=self.backend,
        )  # fmt: skip

    def _bag_offsets(self, input: Tensor, offsets: Tensor | None) -> tuple[Tensor, Tensor]:
        """(ids (n,), offsets (B+1,) int64): every input form as soft_select_bag's bags (a
        lookup past the last offset with include_last_offset is in no bag)."""
        if input.dim() == 2:
            if offsets is not None:
                raise ValueError("offsets must be None when input is 2-D (bags of equal size)")
            num_bags, size = input.shape
            ends = torch.arange(num_bags + 1, device=input.device) * size
            return input.reshape(-1), ends
        if input.dim() != 1:
            raise ValueError(f"input must be 1-D or 2-D, got shape {tuple(input.shape)}")
        if offsets is None or offsets.dim() != 1:
            raise ValueError("offsets must be a 1-D tensor when input is 1-D")
        if offsets.is_floating_point():
            raise ValueError(f"offsets must be int32 or int64, got {offsets.dtype}")
        ends = offsets.to(torch.int64)
        if ends.numel() == 0:  # no bags
            return input, ends.new_zeros(1)
        if not self.include_last_offset:
            ends = torch.cat([ends, ends.new_full((1,), input.numel())])
        return input, ends

    def extra_repr(self) -> str:
        last = ", include_last_offset=True" if self.include_last_offset else ""
        return f"{self._search_repr()}, mode={self.mode!r}{last}"


def check_per_sample_weights(mode: str, input: Tensor, per_sample_weights: Tensor | None) -> None:
    """ValueError unless per_sample_weights is None, or has input's shape with mode "sum"
    (nn.EmbeddingBag's rule)."""
    if per_sample_weights is None:
        return
    if mode != "sum":
        raise ValueError(f"per_sample_weights is only supported with mode 'sum', got {mode!r}")
    if per_sample_weights.shape != input.shape:
        raise ValueError(
            f"per_sample_weights must have input's shape {tuple(input.shape)}, got "
            f"{tuple(per_sample_weights.shape)}"
        )


def pool(rows: Tensor, bags: Tensor, num_bags: int, mode: str) -> Tensor:
    """(B, K) bags pooled from rows (n, K) float with bag index bags (n,) int64 in [0, B];
    rows in bag B are dropped. mode: "sum", "mean" (over the rows a bag keeps) or "max"
    (an empty bag is zeros). Differentiable; no host syncs."""
    dim = rows.shape[1]
    if mode == "max":
        out = rows.new_zeros(num_bags + 1, dim).scatter_reduce(
            0, bags.unsqueeze(1).expand(-1, dim), rows, "amax", include_self=False
        )
        return out[:num_bags]
    out = rows.new_zeros(num_bags + 1, dim).index_add(0, bags, rows)[:num_bags]
    if mode == "mean":
        count = rows.new_zeros(num_bags + 1).index_add(0, bags, rows.new_ones(bags.shape))
        out = out / count[:num_bags].clamp(min=1).unsqueeze(1)
    return out


def _table(n: int, k: int, padding_idx: int | None, weight: nn.Parameter | None) -> nn.Parameter:
    if weight is not None:
        if not isinstance(weight, nn.Parameter) or tuple(weight.shape) != (n, k):
            raise ValueError(f"weight must be an nn.Parameter of shape ({n}, {k})")
        return weight
    table = nn.Parameter(torch.empty(n, k))
    nn.init.normal_(table)
    if padding_idx is not None:
        with torch.no_grad():
            table[padding_idx].zero_()
    return table


def _check_supported(module: nn.Module, name: str) -> None:
    """ValueError naming the module when it uses an option the twins do not support."""
    for option in ("max_norm", "scale_grad_by_freq", "sparse"):
        value = getattr(module, option, None)
        if value:
            raise ValueError(f"{name}: {option}={value} is not supported by searchable()")


TWINS = (SearchableEmbedding, SearchableEmbeddingBag)

#: searchable kinds defined by optional modules, which add them when imported
#: (``mixemb.nn.torchrec_rows`` adds ``RowsSoftSelect``), so this file never imports torchrec
OPTIONAL_KINDS: list[type] = []

#: the TorchRec collections ``searchable`` replaces whole, by their class's name
_COLLECTIONS = ("EmbeddingBagCollection", "EmbeddingCollection")


def searchable_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Qualified name → twin for every searchable module in ``model`` (each once): the
    twins ``searchable`` makes (the tables of a TorchRec collection's twin among them),
    the :class:`SoftSelectEmbedding` of mixemb's own models (its frequency blocks are id
    ranges) and the ``RowsSoftSelect`` α holders of a TorchRec-sharded table
    (``mixemb.nn.torchrec_rows``), which own α and the block map but not the table."""
    from mixemb.nn.soft_select import SoftSelectEmbedding

    kinds = (*TWINS, SoftSelectEmbedding, *OPTIONAL_KINDS)
    return {name: m for name, m in model.named_modules() if isinstance(m, kinds)}


def _torchrec_collections(model: nn.Module) -> dict[str, nn.Module]:
    """Qualified name → every TorchRec EmbeddingBagCollection / EmbeddingCollection of
    ``model`` (every name of a shared one), told by its class's module and name, so
    nothing from torchrec is imported here."""
    return {
        name: m
        for name, m in model.named_modules(remove_duplicate=False)
        if name and _is_torchrec_collection(m)
    }


def _is_torchrec_collection(module: nn.Module) -> bool:
    kind = type(module)
    return kind.__module__ == "torchrec.modules.embedding_modules" and (
        kind.__name__ in _COLLECTIONS
    )


def _collection_twin(module: nn.Module, num_blocks: int) -> nn.Module:
    """The searchable twin of a TorchRec collection (``mixemb.nn.torchrec_twins``): per
    table the twin of its nn module, sharing the weight, with α (num_blocks, K) of ones."""
    from mixemb.nn.torchrec_twins import EmbeddingBagCollectionTwin, EmbeddingCollectionTwin

    if type(module).__name__ == "EmbeddingBagCollection":
        bags = {name: SearchableEmbeddingBag.from_module(bag, num_blocks)
                for name, bag in module.embedding_bags.items()}  # fmt: skip
        configs = module.embedding_bag_configs()
        return EmbeddingBagCollectionTwin(configs, bags, is_weighted=module.is_weighted())
    tables = {name: SearchableEmbedding.from_module(table, num_blocks)
              for name, table in module.embeddings.items()}  # fmt: skip
    configs = module.embedding_configs()
    return EmbeddingCollectionTwin(configs, tables, need_indices=module.need_indices())


def searchable(
    model: nn.Module,
    frequencies: Mapping[str, Tensor | Sequence[float]] | None = None,
    *,
    num_blocks: int = 10,
    include: Sequence[str] | None = None,
) -> nn.Module:
    """Replace, in place, every nn.Embedding / nn.EmbeddingBag of ``model`` (or those named
    in ``include``) with its searchable twin (same weight Parameter); returns ``model``.

    A TorchRec ``EmbeddingBagCollection`` / ``EmbeddingCollection`` is replaced whole by
    its twin (``EmbeddingBagCollectionTwin`` / ``EmbeddingCollectionTwin`` of
    ``mixemb.nn.torchrec_twins``), which takes the same KeyedJaggedTensor, returns what
    the original returns and exports; ``include`` names it by its own qualified name.

    frequencies: qualified module name → (N,) per-id counts, applied with
    ``set_frequencies``; a collection's tables by the names ``searchable_modules`` gives
    them, ``<collection>.embedding_bags.<table>`` (``<collection>.embeddings.<table>`` for
    an EmbeddingCollection), ``<table>`` its config's name. num_blocks: L, the number of α
    rows of every new twin. A module shared under several names is replaced by one twin
    everywhere.
    """
    if isinstance(model, (nn.Embedding, nn.EmbeddingBag)):
        raise ValueError("model is itself an embedding module: wrap it in a module first")
    if _is_torchrec_collection(model):
        raise ValueError("model is itself a TorchRec collection: wrap it in a module first")
    collections = _torchrec_collections(model)
    inner = {  # a collection's tables: replaced with it, never on their own
        f"{name}.{table}": name
        for name, module in collections.items()
        for table, m in module.named_modules(remove_duplicate=False)
        if isinstance(m, (nn.Embedding, nn.EmbeddingBag))
    }
    tables = {
        name: m
        for name, m in model.named_modules(remove_duplicate=False)
        if isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and name and name not in inner
    }
    done = set(searchable_modules(model))
    wanted = set(tables) | set(collections) if include is None else set(include)
    named_inner = sorted(wanted & set(inner))
    if named_inner:
        first = named_inner[0]
        raise ValueError(
            f"include names {first!r}, a table of the TorchRec collection {inner[first]!r}: "
            "name the collection"
        )
    for what, names, known in (
        ("include", wanted, set(tables) | set(collections) | done),
        ("frequencies", set(frequencies or {}), set(tables) | set(inner) | done),
    ):
        unknown = sorted(names - known)
        if unknown:
            raise ValueError(f"{what} names no embedding module of the model: {unknown}")
    for name in sorted(wanted & set(tables)):
        _check_supported(tables[name], name)
    for name in sorted(wanted & set(collections)):
        for table, m in collections[name].named_modules():
            if isinstance(m, (nn.Embedding, nn.EmbeddingBag)):
                _check_supported(m, f"{name}.{table}")
    twins: dict[int, nn.Module] = {}
    for name in sorted(wanted & set(tables)):
        module = tables[name]
        if id(module) not in twins:
            kind = (
                SearchableEmbedding if isinstance(module, nn.Embedding) else SearchableEmbeddingBag
            )
            twins[id(module)] = kind.from_module(module, num_blocks)
    for name in sorted(wanted & set(collections)):
        module = collections[name]
        if id(module) not in twins:
            twins[id(module)] = _collection_twin(module, num_blocks)
    # every name of a replaced module, shared or not
    for name, module in {**tables, **collections}.items():
        if id(module) in twins:
            parent_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_name), attr, twins[id(module)])
    for name, counts in (frequencies or {}).items():
        twin = model.get_submodule(name)
        if not isinstance(twin, (*TWINS, *OPTIONAL_KINDS)):
            raise ValueError(f"frequencies names {name!r}, which is not made searchable")
        twin.set_frequencies(torch.as_tensor(counts))
    return model
