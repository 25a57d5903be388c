"""Twins of TorchRec's ``EmbeddingBagCollection`` and ``EmbeddingCollection`` (the
``mixemb[torchrec]`` extra): ``forward(KeyedJaggedTensor)`` returns what the original
returns, each table a mixemb module at the original's name.

``mixemb.searchable(model)`` replaces a collection whole by its twin holding, per table,
the searchable twin of the original's module (``SearchableEmbeddingBag`` /
``SearchableEmbedding``, sharing its weight Parameter, with its own α (L, K) and per-id
block map), so ``searchable_modules``, ``dnis`` and ``to_ragged`` see every table as a
twin: α scales each looked-up row before the pooling of the table's config.
``to_ragged(model)`` then swaps each table for its ragged serving twin
(``RaggedEmbeddingBag``, run by ``mixemb.ops.ragged_bag``; ``RaggedEmbedding``), and the
same collection serves the pruned tables from a ``KeyedJaggedTensor``. Tables sit under
the original's attribute (``embedding_bags`` / ``embeddings``), so state-dict keys of the
weights are the original's, and ``mixemb.load`` fills a freshly built model holding the
original collection. (This file takes its tables ready-made and does not import
``mixemb.nn.searchable``, which imports it when a model holds a TorchRec collection.)

Every feature a table serves is one call of the table (as in TorchRec), so α's gradient
is normalized per feature call, as for an nn twin called once per feature. While
compiling (``torch.compile``, ``torch.export``) a searchable table runs the registered op
itself: there the KJT's lengths are data-dependent sizes, which the eager id and offset
checks and the reference math's size arguments cannot take.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.export import Dim
from torchrec.modules.embedding_configs import (
    EmbeddingBagConfig,
    EmbeddingConfig,
    pooling_type_to_str,
)
from torchrec.modules.embedding_modules import (
    EmbeddingBagCollectionInterface,
    EmbeddingCollectionInterface,
    get_embedding_names_by_table,
    process_pooled_embeddings,
    reorder_inverse_indices,
)
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor, KeyedTensor

from mixemb.ops.soft_select import soft_select
from mixemb.ops.soft_select_pooled import soft_select_bag_forward

Tensor = torch.Tensor


def check_module(module: nn.Module, kind: type) -> None:
    """ValueError unless ``module`` is a ``kind`` (a TorchRec collection class)."""
    if not isinstance(module, kind):
        raise ValueError(f"module must be a torchrec {kind.__name__}, got {type(module).__name__}")


def feature_routing(configs: list) -> tuple[list[list[str]], list[list[str]], list[int]]:
    """(feature names per table, output keys per table, dim per output key) of TorchRec
    table configs: a feature several tables serve is keyed ``feature@table``."""
    features = [list(c.feature_names or [c.name]) for c in configs]
    dims = [c.embedding_dim for c, names in zip(configs, features) for _ in names]
    return features, get_embedding_names_by_table(configs), dims


def _tables(kind: str, tables: Mapping[str, nn.Module], configs: list) -> nn.ModuleDict:
    """The tables as a ModuleDict in the configs' order, checked against them."""
    names = [c.name for c in configs]
    if sorted(tables) != sorted(names) or len(set(names)) != len(names):
        raise ValueError(f"{kind}: tables {sorted(tables)} do not match the configs {names}")
    for c in configs:
        table = tables[c.name]
        n, k = table.num_embeddings, table.embedding_dim
        if (n, k) != (c.num_embeddings, c.embedding_dim):
            raise ValueError(
                f"{kind}: table {c.name!r} is ({n}, {k}), its config says "
                f"({c.num_embeddings}, {c.embedding_dim})"
            )
    return nn.ModuleDict({name: tables[name] for name in names})


class EmbeddingBagCollectionTwin(EmbeddingBagCollectionInterface):
    """``EmbeddingBagCollection``'s twin: ``forward(features: KeyedJaggedTensor) ->
    KeyedTensor`` with the original's keys (a feature, or ``feature@table`` for a feature
    several tables serve), per-key lengths and float32 values (B, Σ K).

    configs: the original's ``EmbeddingBagConfig`` list (features, pooling "sum" or
        "mean"). tables: config name → a module with ``nn.EmbeddingBag``'s forward taking
        ``include_last_offset`` offsets: a ``SearchableEmbeddingBag`` while searching,
        the ``RaggedEmbeddingBag`` that ``to_ragged`` swaps in for serving.
    is_weighted: each KJT weight multiplies its row (per_sample_weights, "sum" only).
    A KJT with inverse indices (variable batch) is expanded as the original does.
    """

    def __init__(
        self,
        configs: list[EmbeddingBagConfig],
        tables: Mapping[str, nn.Module],
        *,
        is_weighted: bool = False,
    ) -> None:
        super().__init__()
        self.embedding_bags = _tables(type(self).__name__, tables, configs)
        for c in configs:  # KJT offsets hold B+1 entries
            table, mode = self.embedding_bags[c.name], pooling_type_to_str(c.pooling)
            got = (getattr(table, "mode", None), getattr(table, "include_last_offset", None))
            if got != (mode, True):
                raise ValueError(
                    f"{type(self).__name__}: table {c.name!r} must pool {mode!r} with "
                    f"include_last_offset=True, got mode, include_last_offset = {got}"
                )
        self._configs = list(configs)
        self._is_weighted = bool(is_weighted)
        self._feature_names, keys, self._lengths = feature_routing(configs)
        self._embedding_names = [key for table_keys in keys for key in table_keys]

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        flat_names = [name for names in self._feature_names for name in names]
        inverse = reorder_inverse_indices(features.inverse_indices_or_none(), flat_names)
        jagged = features.to_dict()
        pooled = []
        for table, names in zip(self.embedding_bags.values(), self._feature_names):
            for name in names:
                f = jagged[name]
                weights = f.weights() if self._is_weighted else None
                pooled.append(_bag(table, f.values(), f.offsets(), weights).float())
        values = process_pooled_embeddings(pooled_embeddings=pooled, inverse_indices=inverse)
        return KeyedTensor(self._embedding_names, self._lengths, values)

    def embedding_bag_configs(self) -> list[EmbeddingBagConfig]:
        return self._configs

    def is_weighted(self) -> bool:
        return self._is_weighted

    def extra_repr(self) -> str:
        return f"features={self._embedding_names}" + (", weighted" if self._is_weighted else "")


class EmbeddingCollectionTwin(EmbeddingCollectionInterface):
    """``EmbeddingCollection``'s twin: ``forward(features: KeyedJaggedTensor) ->
    dict[str, JaggedTensor]``, per key (a feature, or ``feature@table``) the looked-up
    rows (n_f, K) float32 with the feature's lengths (and its ids as weights with
    need_indices).

    configs: the original's ``EmbeddingConfig`` list (one embedding dim). tables: config
        name → a module with ``nn.Embedding``'s forward: a ``SearchableEmbedding`` while
        searching, the ``RaggedEmbedding`` that ``to_ragged`` swaps in for serving.
    """

    def __init__(
        self,
        configs: list[EmbeddingConfig],
        tables: Mapping[str, nn.Module],
        *,
        need_indices: bool = False,
    ) -> None:
        super().__init__()
        dims = sorted({c.embedding_dim for c in configs})
        if len(dims) > 1:
            raise ValueError(f"{type(self).__name__}: tables must share one dim, got {dims}")
        self.embeddings = _tables(type(self).__name__, tables, configs)
        self._configs = list(configs)
        self._need_indices = bool(need_indices)
        self._feature_names, self._embedding_names_by_table, _ = feature_routing(configs)

    def forward(self, features: KeyedJaggedTensor) -> dict[str, JaggedTensor]:
        jagged = features.to_dict()
        out = {}
        tables = zip(self.embeddings.values(), self._feature_names, self._embedding_names_by_table)
        for table, names, keys in tables:
            for name, key in zip(names, keys):
                f = jagged[name]
                out[key] = JaggedTensor(
                    values=_lookup(table, f.values()).float(),
                    lengths=f.lengths(),
                    weights=f.values() if self._need_indices else None,
                )
        return out

    def embedding_configs(self) -> list[EmbeddingConfig]:
        return self._configs

    def need_indices(self) -> bool:
        return self._need_indices

    def embedding_dim(self) -> int:
        return self._configs[0].embedding_dim if self._configs else -1

    def embedding_names_by_table(self) -> list[list[str]]:
        return self._embedding_names_by_table

    def extra_repr(self) -> str:
        return f"features={[k for keys in self._embedding_names_by_table for k in keys]}"


def kjt_dynamic_shapes(features: KeyedJaggedTensor) -> list:
    """``torch.export``'s dynamic_shapes entry of a KeyedJaggedTensor argument: any
    number of ids (0 included) and any batch size from 2 (export specializes a size of
    1), the keys and their order fixed.

    features: the example KJT (values (n,), lengths (F·B,), offsets (F·B+1,) or None,
    weights (n,) or None), not of variable batch. The entries follow TorchRec's pytree
    order of a KJT (values, weights, lengths, offsets, stride per rank, inverse indices).
    """
    if features.variable_stride_per_key() or features.inverse_indices_or_none() is not None:
        raise ValueError("features must not have a variable batch size per key to export "
                         "with dynamic shapes")  # fmt: skip
    ids, batch = Dim("ids", min=0), Dim("batch", min=2)
    lookups = len(features.keys()) * batch
    weights = None if features.weights_or_none() is None else {0: ids}
    offsets = None if features.offsets_or_none() is None else {0: lookups + 1}
    return [{0: ids}, weights, {0: lookups}, offsets, None, None]


def _searching(table: nn.Module) -> bool:
    """Whether ``table`` is a searchable twin (it holds α; a ragged serving table does not)."""
    return isinstance(getattr(table, "alpha", None), nn.Parameter)


def _bag(table: nn.Module, ids: Tensor, offsets: Tensor, weights: Tensor | None) -> Tensor:
    """(B, K) pooled rows of one feature: offsets (B+1,) from the KJT."""
    if _searching(table) and torch.compiler.is_compiling():
        pad = -1 if table.padding_idx is None else table.padding_idx
        return soft_select_bag_forward(
            table.weight, table.alpha, None, ids, offsets.long(), weights, table.mode, pad,
            table.normalize, float(table.l1), float(table.eps), table.block_map,
        )  # fmt: skip
    return table(ids, offsets, weights)


def _lookup(table: nn.Module, ids: Tensor) -> Tensor:
    """(n, K) rows of one feature's ids (n,)."""
    if _searching(table) and torch.compiler.is_compiling():
        if table.padding_idx is not None:
            raise ValueError(f"a KJT table takes no padding_idx, got {table.padding_idx}")
        return soft_select(
            table.weight, table.alpha, None, ids, None, table.normalize, float(table.l1),
            float(table.eps), False, True, table.block_map,
        )  # fmt: skip
    return table(ids)
