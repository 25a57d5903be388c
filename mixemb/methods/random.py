"""Random search over block dims: the best of several random allocations on validation.

* ``random``: ``random_trials`` random non-increasing block-dim vectors within the
  budget (stored ragged), the best on validation;
* ``random_blocks``: the same stored as one dense table per block (like ``mde_blocks``);
* ``random@m`` / ``random_blocks@m`` (m a method that searches, e.g.
  ``random_blocks@dnis_ft``): random search for the wall time DNIS took for the same
  budget and seed — its shared search plus that budget's prune and fine-tune
  (:func:`mixemb.methods.dnis.dnis_wall_seconds` of the ``m`` cell) — instead of a fixed
  number of trials. A trial starts only while the time used plus the mean trial time so
  far fits that budget; the first trial always runs. :func:`mixemb.methods.compare`
  reads the ``m`` cell; ``run_method`` takes the seconds as ``time_budget``.
"""

from __future__ import annotations

import functools
import random
import time

from mixemb.methods.base import Method
from mixemb.methods.blocks import block_dims_cell, block_sizes, train_block_dims
from mixemb.methods.cells import keep_entries
from mixemb.metrics import primary_metric
from mixemb.prune import InfeasibleBudget
from mixemb.prune.budget import STORAGE_DTYPES

MAX_TIMED_TRIALS = 1000  # a time-matched random search stops here whatever time is left


def random_block_dims(
    rng: random.Random, sizes: list[int], dim: int, budget_params: int, min_dim: int
) -> list[int] | None:
    """Random non-increasing block dims in [min_dim, dim] within the budget.

    Draws L dims uniformly in [min_dim, dim], sorts them (frequent blocks get more),
    then shrinks them by the largest common factor that fits the budget (never below
    min_dim). None when even min_dim everywhere exceeds the budget.
    """
    if sum(sizes) * min_dim > budget_params:
        return None
    draw = sorted((rng.randint(min_dim, dim) for _ in sizes), reverse=True)

    def shrink(c: float) -> list[int]:
        return [max(min_dim, int(c * d)) for d in draw]

    def cost(dims: list[int]) -> int:
        return sum(s * d for s, d in zip(sizes, dims))

    if cost(draw) <= budget_params:
        return draw
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cost(shrink(mid)) <= budget_params else (lo, mid)
    return shrink(lo)


def another_trial(
    durations: list[float], elapsed: float, trials: int, time_budget: float | None = None
) -> bool:
    """Whether random search starts another trial: the first always; then, without a
    ``time_budget``, until ``trials`` ran; with one (seconds), while ``elapsed`` plus the
    mean of the trials' ``durations`` so far fits it (at most MAX_TIMED_TRIALS)."""
    if not durations:
        return True
    if time_budget is None:
        return len(durations) < trials
    mean = sum(durations) / len(durations)
    return len(durations) < MAX_TIMED_TRIALS and elapsed + mean <= time_budget


def run_random(
    ds, model_name, cfg, budget, seed, log, time_budget=None, value_dtype="fp32", *, name, storage
) -> dict:
    """Random search over block dims: ``cfg.random_trials`` trials, or as many as fit
    ``time_budget`` seconds (see :func:`another_trial`); the best on validation (of the
    fp32 model: every trial is stored in the same dtype)."""
    t0 = time.perf_counter()
    boundaries, sizes = block_sizes(ds, cfg)
    budget_params = keep_entries(ds, cfg, budget, storage, value_dtype)
    min_dim = max(1, min(cfg.min_block_dim, budget_params // ds.num_features))
    if sum(sizes) * min_dim > budget_params:
        raise InfeasibleBudget(
            f"no block dims >= {min_dim} fit {budget_params:,} parameters (budget {budget:g})"
        )
    rng = random.Random(seed)
    metric, direction = primary_metric(ds.task, cfg.k)
    best, durations = None, []
    while another_trial(durations, time.perf_counter() - t0, cfg.random_trials, time_budget):
        start = time.perf_counter()
        dims = random_block_dims(rng, sizes, cfg.dim, budget_params, min_dim)
        model, result = train_block_dims(ds, model_name, cfg, boundaries, dims, seed, log)
        durations.append(time.perf_counter() - start)
        value = result.valid[metric]
        if best is None or (value < best[0] if direction == "min" else value > best[0]):
            best = (value, model, dims)
    _, model, dims = best
    extra = {} if time_budget is None else {"time_budget_seconds": time_budget}
    return block_dims_cell(
        name, ds, model, cfg, budget, seed, t0, sizes, dims, storage, value_dtype,
        trials=len(durations), **extra,
    )  # fmt: skip


METHODS = tuple(
    Method(
        name,
        functools.partial(run_random, name=name, storage=storage),
        argument="m",
        time_matched=True,
        value_dtypes=STORAGE_DTYPES[storage],
    )
    for name, storage in (("random", "ragged"), ("random_blocks", "blocks"))
)
