"""Block-dimension methods' shared parts: one dimension per frequency block.

A block-dims model trains a MaskedEmbedding whose block l keeps its first d_l
dimensions. It is reported either exported ragged (prefix masks, ``storage="ragged"``)
or as it would be deployed, one dense (rows_l, d_l) table per block plus the L+1 block
boundaries (``storage="blocks"``): no per-row metadata (but an int8 row's scale and
bias), so at a byte budget it keeps more dimensions.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mixemb.data.schema import Dataset
from mixemb.methods.cells import make_cell
from mixemb.methods.config import MethodConfig
from mixemb.models import build_model
from mixemb.nn import MaskedEmbedding
from mixemb.prune import block_tables_bytes, to_ragged_model
from mixemb.prune.budget import ragged_bytes
from mixemb.train import TrainResult, fit


def block_sizes(ds: Dataset, cfg: MethodConfig) -> tuple[torch.Tensor, list[int]]:
    """(boundaries (L+1,) int64, rows per block) of the α blocks
    (:meth:`Dataset.block_boundaries`)."""
    b = ds.block_boundaries(cfg.num_blocks)
    return b, (b[1:] - b[:-1]).tolist()


def scaled_block_dims(
    weights: list[float], sizes: list[int], dim: int, budget_params: int
) -> list[int]:
    """Block dims d_l = clip(round(c · w_l), 1, dim), c the largest scale whose parameter
    count Σ size_l·d_l fits the budget (bisection); weights ≤ 0 count as 1e-12."""
    f = [max(x, 1e-12) for x in weights]

    def dims(c: float) -> list[int]:
        return [min(dim, max(1, round(c * x))) for x in f]

    lo, hi = 0.0, dim / min(f) * 2
    for _ in range(100):
        mid = (lo + hi) / 2
        if sum(s * d for s, d in zip(sizes, dims(mid))) <= budget_params:
            lo = mid
        else:
            hi = mid
    return dims(lo)


def train_block_dims(
    ds: Dataset,
    model_name: str,
    cfg: MethodConfig,
    boundaries: torch.Tensor,
    dims: list[int],
    seed: int,
    log: Callable[[str], None],
) -> tuple[nn.Module, TrainResult]:
    """A fresh ``model_name`` model whose block l keeps ``dims[l]`` dims, trained."""
    torch.manual_seed(seed)
    emb = MaskedEmbedding.from_block_dims(ds.num_features, cfg.dim, boundaries, dims)
    model = build_model(
        model_name, ds.num_features, ds.num_fields, cfg.dim, embedding=emb, **cfg.model_kwargs
    )
    result = fit(model, ds, cfg.train_config(seed), log=log)
    return model, result


def block_dims_cell(
    method: str,
    ds: Dataset,
    model: nn.Module,
    cfg: MethodConfig,
    budget: float,
    seed: int,
    t0: float,
    sizes: list[int],
    dims: list[int],
    storage: str,
    value_dtype: str = "fp32",
    **extra,
) -> dict:
    """Report a trained block-dims model with ``value_dtype`` values: exported ragged
    (prefix masks), or (``storage="blocks"``) counted as per-block dense tables — the
    masked model's outputs are exactly those of the per-block tables."""
    kept = sum(s * d for s, d in zip(sizes, dims))
    if storage == "blocks":
        nbytes = block_tables_bytes(sizes, dims, value_dtype)
        serving = model
    else:
        serving = to_ragged_model(model, model.embedding.masked_weight())
        emb = serving.embedding
        nbytes = ragged_bytes(
            emb.num_embeddings, emb.embedding_dim, emb.values.numel(), value_dtype
        )
    return make_cell(
        method, ds, serving, cfg, budget, seed, t0, kept, nbytes, value_dtype,
        block_dims=dims, **extra,
    )  # fmt: skip
