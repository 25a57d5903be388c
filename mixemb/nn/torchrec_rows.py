"""DNIS when TorchRec owns the tables: α applied to the rows an (optionally sharded)
``EmbeddingCollection`` looked up, then the pooling of the ``EmbeddingBagCollection`` it
stands in for (the ``mixemb[torchrec]`` extra).

TorchRec shards an ``EmbeddingCollection`` (unpooled lookups) across ranks and returns,
per feature, the rows of the rank's batch; :class:`SoftSelectPooling` scales each row by
its table's α[block_map[id]] and pools it as the ``EmbeddingBagConfig`` says, so TorchRec
keeps the tables, their sharding and their optimizer, and α (L, K) and the block map (N,)
per table are small dense state every rank holds. The α scaling is the lookup op
(``soft_select_lookup``) over the looked-up rows as its table, so the gradients are the
op's: w.r.t. α summed over the feature's lookups, L1 term added and normalized per block
row — what an :class:`~mixemb.nn.torchrec_twins.EmbeddingBagCollectionTwin` gives the
same tables — and w.r.t. the rows α[block] ⊙ dout, which TorchRec's backward takes on to
its tables.

``mixemb.searchable_modules`` lists every :class:`RowsSoftSelect` (importing this module
registers the class), so ``mixemb.dnis`` searches their α and counts the ids of their
first argument; ``mixemb.to_ragged`` refuses them, as they hold no table: gather the
tables and prune :func:`bag_twin` of the pooling and those tables instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields

import torch
from torch import nn
from torchrec.modules.embedding_configs import (
    BaseEmbeddingConfig,
    EmbeddingBagConfig,
    EmbeddingConfig,
    pooling_type_to_str,
)
from torchrec.modules.embedding_modules import (
    EmbeddingBagCollection,
    process_pooled_embeddings,
    reorder_inverse_indices,
)
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor, KeyedTensor

from mixemb.nn.searchable import OPTIONAL_KINDS, SearchableEmbeddingBag, _Searchable, pool
from mixemb.nn.torchrec_twins import EmbeddingBagCollectionTwin, check_module, feature_routing
from mixemb.ops import soft_select_lookup
from mixemb.ops.soft_select import check_ids_in_range
from mixemb.ops.soft_select_pooled import bag_of_lookups

Tensor = torch.Tensor


class RowsSoftSelect(nn.Module):
    """One table's α for rows looked up elsewhere: ``forward(ids (n,) int, rows (n, K)
    float) -> (n, K)`` = rows ⊙ alpha[block_map[ids]] in promote_types(rows, alpha).

    num_embeddings, embedding_dim: N and K of the table, which lives elsewhere;
    num_blocks: L. alpha: (L, K) float32 ones; block_map: (N,) int64 buffer, zeros until
    ``set_frequencies``; has_frequencies: 0-d bool buffer. normalize, l1, eps: α's gradient
    post-processing (``soft_select_lookup``'s); backend: the op's.
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        num_blocks: int = 10,
        *,
        normalize: bool = True,
        l1: float = 0.0,
        eps: float = 1e-8,
        backend: str = "auto",
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("num_embeddings", num_embeddings), ("embedding_dim", embedding_dim),
                            ("num_blocks", num_blocks)):  # fmt: skip
            if type(value) is not int or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.alpha = nn.Parameter(torch.ones(num_blocks, embedding_dim, device=device))
        self.register_buffer("block_map", torch.zeros(num_embeddings, dtype=torch.int64,
                                                      device=device))  # fmt: skip
        self.register_buffer("has_frequencies", torch.tensor(False, device=device))
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.normalize, self.l1, self.eps, self.backend = normalize, l1, eps, backend

    @property
    def num_blocks(self) -> int:
        return self.alpha.shape[0]

    # the nn twins' own: ids ranked by count, split into num_blocks blocks, counts checked
    set_frequencies = _Searchable.set_frequencies

    def forward(self, ids: Tensor, rows: Tensor) -> Tensor:
        if ids.dim() != 1 or rows.dim() != 2 or rows.shape[0] != ids.shape[0]:
            raise ValueError(
                f"ids must be (n,) and rows (n, K): got {tuple(ids.shape)}, {tuple(rows.shape)}"
            )
        if not (ids.is_cuda or torch.compiler.is_compiling()):
            check_ids_in_range(ids, self.num_embeddings)
        # the rows are the op's table, each looked up once with its id's block
        slots = torch.arange(rows.shape[0], device=rows.device)
        return soft_select_lookup(
            rows, self.alpha, None, slots, block_map=self.block_map[ids],
            normalize=self.normalize, l1=self.l1, eps=self.eps, backend=self.backend,
            check_ids=False,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return (
            f"{self.num_embeddings}, {self.embedding_dim}, blocks={self.num_blocks}, "
            f"normalize={self.normalize}, l1={self.l1}, backend={self.backend!r}"
        )


OPTIONAL_KINDS.append(RowsSoftSelect)


class SoftSelectPooling(nn.Module):
    """``forward(features: KeyedJaggedTensor, embeddings: dict[str, JaggedTensor]) ->
    KeyedTensor``: the output an ``EmbeddingBagCollection`` of ``configs`` would give,
    from the rows an ``EmbeddingCollection`` of the same tables returned for
    ``features`` (``embeddings[key].values()`` (n_f, K), in the order of the feature's
    ids), each row × its table's α before the pooling ("sum" or "mean"; an empty bag is
    zeros; with is_weighted the KJT weights multiply the rows, "sum" only).

    configs: the ``EmbeddingBagConfig`` list. num_blocks: L of every table's α.
    Per table a :class:`RowsSoftSelect` under ``tables``.
    """

    def __init__(
        self,
        configs: list[EmbeddingBagConfig],
        num_blocks: int = 10,
        *,
        is_weighted: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.tables = nn.ModuleDict(
            {
                c.name: RowsSoftSelect(c.num_embeddings, c.embedding_dim, num_blocks, device=device)
                for c in configs
            }  # fmt: skip
        )
        if len(self.tables) != len(configs):
            raise ValueError(f"configs name a table twice: {[c.name for c in configs]}")
        self._configs = list(configs)
        self._modes = [pooling_type_to_str(c.pooling) for c in configs]
        if is_weighted and "mean" in self._modes:
            raise ValueError("is_weighted needs every table to pool 'sum'")
        self._is_weighted = bool(is_weighted)
        self._feature_names, self._keys, self._lengths = feature_routing(configs)

    @classmethod
    def from_module(cls, module: EmbeddingBagCollection, num_blocks: int = 10):
        """The pooling for ``module``'s tables (α of ones, no frequencies yet)."""
        check_module(module, EmbeddingBagCollection)
        device = next(iter(module.parameters())).device
        return cls(module.embedding_bag_configs(), num_blocks, is_weighted=module.is_weighted(),
                   device=device)  # fmt: skip

    def forward(
        self, features: KeyedJaggedTensor, embeddings: dict[str, JaggedTensor]
    ) -> KeyedTensor:
        flat_names = [name for names in self._feature_names for name in names]
        inverse = reorder_inverse_indices(features.inverse_indices_or_none(), flat_names)
        jagged = features.to_dict()
        pooled = []
        tables = zip(self.tables.values(), self._modes, self._feature_names, self._keys)
        for table, mode, names, keys in tables:
            for name, key in zip(names, keys):
                f = jagged[name]
                ids, offsets = f.values(), f.offsets()
                rows = table(ids, embeddings[key].values())
                if self._is_weighted:
                    rows = rows * f.weights().unsqueeze(1).to(rows.dtype)
                bags = bag_of_lookups(ids, offsets)
                pooled.append(pool(rows, bags, offsets.numel() - 1, mode).float())
        values = process_pooled_embeddings(pooled_embeddings=pooled, inverse_indices=inverse)
        return KeyedTensor([k for keys in self._keys for k in keys], self._lengths, values)

    def embedding_bag_configs(self) -> list[EmbeddingBagConfig]:
        return self._configs


def bag_twin(
    pooling: SoftSelectPooling, tables: Mapping[str, Tensor]
) -> EmbeddingBagCollectionTwin:
    """The ``EmbeddingBagCollectionTwin`` that ``pooling`` over an EmbeddingCollection of
    ``tables`` computes: per table a ``SearchableEmbeddingBag`` of the config's pooling
    whose weight is the table and whose α, block map, frequencies flag and α-gradient
    settings are the :class:`RowsSoftSelect`'s (copies), for ``mixemb.to_ragged`` to
    prune and serve.

    tables: config name → (N, K) float, every table whole (a sharded one gathered first);
        the twin's weights share their memory.
    """
    if sorted(tables) != sorted(pooling.tables):
        raise ValueError(
            f"tables must name the pooling's tables {sorted(pooling.tables)}, got {sorted(tables)}"
        )
    bags = {}
    for (name, holder), mode in zip(pooling.tables.items(), pooling._modes):
        weight = tables[name]
        shape = (holder.num_embeddings, holder.embedding_dim)
        if not isinstance(weight, Tensor) or tuple(weight.shape) != shape:
            got = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
            raise ValueError(f"tables[{name!r}] must be a {shape} tensor, got {got}")
        bag = SearchableEmbeddingBag(
            *shape, holder.num_blocks, mode=mode, include_last_offset=True,
            weight=nn.Parameter(weight.detach()), normalize=holder.normalize, l1=holder.l1,
            eps=holder.eps, backend=holder.backend,
        )  # fmt: skip
        bag.load_state_dict(holder.state_dict(), strict=False)  # α and block map, no weight
        bags[name] = bag
    return EmbeddingBagCollectionTwin(pooling._configs, bags, is_weighted=pooling._is_weighted)


def unpooled_configs(configs: list[EmbeddingBagConfig]) -> list[EmbeddingConfig]:
    """The ``EmbeddingConfig`` of every bag config (the same table fields, no pooling): the
    ``EmbeddingCollection`` TorchRec shards in place of the bag collection, whose lookups
    :class:`SoftSelectPooling` of ``configs`` pools. TorchRec wants its tables to share
    one dim."""
    return [
        EmbeddingConfig(**{f.name: getattr(c, f.name) for f in fields(BaseEmbeddingConfig)})
        for c in configs
    ]
