"""Mixed-dimension embeddings (Ginart et al.): block dims from a frequency power law.

* ``mde``: block dims ∝ (mean frequency of the block)^a, budget-matched; ``mde@a`` sets
  the exponent a for that cell (e.g. ``mde@0``, ``mde@0.5``; default
  ``MethodConfig.mde_exponent``); stored as a ragged table (prefix masks);
* ``mde_blocks`` (``@a``): the same block dims stored as they would be deployed — one
  dense (rows_l, d_l) table per frequency block plus the L+1 block boundaries — so
  at a byte budget they keep more dimensions (``mde`` pays the ragged masks, 8.5 B per
  row at K=64, which at 5 % of the bytes leaves it about one dimension per row).
"""

from __future__ import annotations

import functools
import time

import torch

from mixemb.methods.base import Method
from mixemb.methods.blocks import block_dims_cell, block_sizes, scaled_block_dims, train_block_dims
from mixemb.methods.cells import keep_entries
from mixemb.prune.budget import STORAGE_DTYPES


def mde_block_dims(
    mean_freq: list[float], sizes: list[int], dim: int, budget_params: int, exponent: float
) -> list[int]:
    """Block dims d_l = clip(round(c · mean_freq_l^a), 1, dim), c the largest scale whose
    parameter count Σ size_l·d_l fits the budget (bisection)."""
    return scaled_block_dims(
        [max(x, 1e-12) ** exponent for x in mean_freq], sizes, dim, budget_params
    )


def run_mde(ds, model_name, cfg, budget, seed, log, value_dtype="fp32", *, name, storage) -> dict:
    t0 = time.perf_counter()
    boundaries, sizes = block_sizes(ds, cfg)
    freq = torch.as_tensor(ds.encoder.frequencies, dtype=torch.float64)
    mean_freq = [float(freq[a:b].mean()) for a, b in zip(boundaries[:-1], boundaries[1:])]
    budget_params = keep_entries(ds, cfg, budget, storage, value_dtype)
    dims = mde_block_dims(mean_freq, sizes, cfg.dim, budget_params, cfg.mde_exponent)
    model, _ = train_block_dims(ds, model_name, cfg, boundaries, dims, seed, log)
    return block_dims_cell(
        name, ds, model, cfg, budget, seed, t0, sizes, dims, storage, value_dtype,
        exponent=cfg.mde_exponent,
    )  # fmt: skip


def parse_exponent(arg: str) -> dict:
    """``"0.5"`` (of ``mde@0.5``) → {"mde_exponent": 0.5}."""
    try:
        return {"mde_exponent": float(arg)}
    except ValueError:
        raise ValueError(f"mde@a needs a number a, got {arg!r}") from None


METHODS = tuple(
    Method(
        name,
        functools.partial(run_mde, name=name, storage=storage),
        parse=parse_exponent,
        argument="a",
        value_dtypes=STORAGE_DTYPES[storage],
    )
    for name, storage in (("mde", "ragged"), ("mde_blocks", "blocks"))
)
