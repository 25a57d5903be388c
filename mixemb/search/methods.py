"""DNIS and its baselines at a parameter budget, each returning one result cell.

A budget is a fraction of the uniform-K table's N·K parameters. Every method goes
through the same data, model and trainer, and reports its validation and test metrics,
the parameters it keeps, the bytes it stores (ragged tables count their metadata; the
uniform baseline is stored dense) and its wall time. Selection uses validation only.

Methods:
* ``uniform``: one dimension d = floor(budget·K) for every feature (the grid's point);
* ``dnis``: search α, merge, prune to the budget; ``dnis_ft`` then fine-tunes with the
  mask fixed for ``finetune_epochs`` (early stopping on validation);
* ``dnis_aligned`` (``_ft``): DNIS's per-feature dimensions (the element-wise pruning's
  count per row), kept at positions shared by every feature (one global column order),
  so two features' kept dimensions always overlap in dot products (see
  :func:`mixemb.search.export.aligned_prune`);
* ``dnis_floor`` (``_ft``): element-wise pruning in which every feature first keeps its
  largest entry (:func:`mixemb.search.export.floor_prune`): at small budgets plain DNIS
  leaves the rarest features with no dimension at all (half of them at 5 % of the bytes
  on ML-1M rating NeuMF);
* ``dnis_rot`` (``_ft``): Ê is first rotated onto its right singular vectors (Ê·V, V
  orthogonal), then pruned element-wise like ``dnis``. Exact only for models whose
  embeddings meet in dot products alone (MF, FM): other models are skipped;
* ``dnis_warm`` (``_ft``): DNIS whose warm start is the plain trainer's whole schedule
  (up to ``epochs`` with early stopping, as the uniform-K model trains) instead of
  ``warmup_epochs``; the search then starts from a converged model. Its search time
  includes that warm start;
* ``dnis_blocks``: DNIS as a block-dimension search — the mean dimension its pruning
  keeps per frequency block, scaled to the budget, trained from scratch and stored as
  one dense table per block (like ``mde_blocks``): α's allocation at MDE's storage;
* ``magnitude``: train uniform-K, prune its table to the budget; ``magnitude_ft`` then
  fine-tunes the same way; ``magnitude_rot`` (``_ft``) rotates first, like ``dnis_rot``;
* ``mde``: block dims ∝ (mean frequency of the block)^a, budget-matched (Ginart et al.);
  ``mde@a`` sets the exponent a for that cell (e.g. ``mde@0``, ``mde@0.5``);
* ``random``: N random non-increasing block-dim vectors within the budget, best on valid.
* ``mde_blocks`` (``@a``) / ``random_blocks``: the same block dims stored as they would
  be deployed — one dense (rows_l, d_l) fp32 table per frequency block plus the L+1
  block boundaries — instead of as a ragged table: no per-row metadata, so at a byte
  budget they keep more dimensions (``mde`` / ``random`` pay the ragged masks, 8.5 B
  per row at K=64, which at 5 % of the bytes leaves them about one dimension per row).
* ``random@m`` / ``random_blocks@m`` (m a DNIS method, e.g. ``random_blocks@dnis_ft``):
  random search for the wall time DNIS took for the same budget and seed — its shared
  search plus that budget's prune and fine-tune (:func:`dnis_wall_seconds` of the ``m``
  cell) — instead of a fixed number of trials. A trial starts only while the time used
  plus the mean trial time so far fits that budget; the first trial always runs.
  :func:`mixemb.search.compare.compare` reads the ``m`` cell; ``run_method`` takes the
  seconds as ``time_budget``.

Budgets: ``budget_unit="params"`` (default) — a fraction of the N·K parameters;
``"bytes"`` — a fraction of the uniform-K table's dense fp32 bytes (4·N·K), which ragged
tables must meet *including* their metadata (so equal budgets are equal stored bytes).

The DNIS search (per seed) and the uniform-K model of ``magnitude*`` (per seed) are
trained once per process and reused across budgets and the ``_ft``/``_aligned``/``_rot``
variants; each cell reports the shared search's wall time as ``search_seconds``.
"""

from __future__ import annotations

import functools
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import torch
from torch import nn

from mixemb.data.schema import Dataset
from mixemb.metrics import primary_metric
from mixemb.models import build_model
from mixemb.nn import MaskedEmbedding, make_boundaries
from mixemb.prune import PruneReport, prune
from mixemb.search.dnis import SearchConfig, build_search_model, search
from mixemb.search.export import (
    aligned_prune,
    floor_prune,
    merge_and_prune,
    merged_table,
    ragged_metadata_bytes,
    rotate_table,
    to_ragged_model,
)
from mixemb.train.trainer import TrainConfig, evaluate, fit

METHODS = (
    "uniform",
    "dnis",
    "dnis_ft",
    "dnis_aligned",
    "dnis_aligned_ft",
    "dnis_floor",
    "dnis_floor_ft",
    "dnis_rot",
    "dnis_rot_ft",
    "dnis_warm",
    "dnis_warm_ft",
    "dnis_blocks",
    "magnitude",
    "magnitude_ft",
    "magnitude_rot",
    "magnitude_rot_ft",
    "mde",
    "mde_blocks",
    "random",
    "random_blocks",
)
ROTATION_MODELS = ("mf", "fm")  # embeddings only meet in dot products: E·V is exact


@dataclass
class MethodConfig:
    """Settings shared by every method (JSON-able).

    dim: K of the uniform reference table. num_blocks: L frequency blocks.
    epochs / patience / lr / batch_size: the plain trainer's settings (all methods).
    search_epochs / warmup_epochs / alpha_lr / l1: DNIS search settings.
    finetune_epochs: maximum fine-tuning epochs of dnis_ft / magnitude_ft (mask fixed).
    random_trials: trials of random search. mde_exponent: a of MDE.
    min_block_dim: smallest block dimension of random search (4, lowered if the budget
        cannot afford it).
    budget_unit: "params" (a fraction of N·K entries) or "bytes" (a fraction of the dense
        uniform-K fp32 bytes, metadata of ragged tables included).
    """

    dim: int = 64
    num_blocks: int = 10
    epochs: int = 20
    patience: int = 2
    lr: float = 1e-3
    batch_size: int = 1024
    search_epochs: int = 5
    warmup_epochs: int = 2
    alpha_lr: float = 1e-2
    l1: float = 1e-5
    finetune_epochs: int = 10
    random_trials: int = 5
    mde_exponent: float = 0.3
    min_block_dim: int = 4
    k: int = 10
    device: str = "cpu"
    model_kwargs: dict = field(default_factory=dict)
    budget_unit: str = "params"

    def __post_init__(self) -> None:
        if self.budget_unit not in ("params", "bytes"):
            raise ValueError(f"budget_unit must be 'params' or 'bytes', got {self.budget_unit!r}")

    def train_config(self, seed: int, epochs: int | None = None) -> TrainConfig:
        return TrainConfig(
            epochs=epochs or self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            patience=self.patience,
            seed=seed,
            k=self.k,
            device=self.device,
        )

    def search_config(self, seed: int) -> SearchConfig:
        return SearchConfig(
            dim=self.dim,
            num_blocks=self.num_blocks,
            warmup_epochs=self.warmup_epochs,
            search_epochs=self.search_epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            alpha_lr=self.alpha_lr,
            l1=self.l1,
            patience=self.patience,
            seed=seed,
            k=self.k,
            device=self.device,
        )


class InfeasibleBudget(ValueError):
    """A method cannot produce a model within the budget (e.g. min dims exceed it)."""


class NotApplicable(InfeasibleBudget):
    """A method does not apply to this model (recorded as skipped, like a budget)."""


# (kind, dataset id, model, config, seed) -> trained state, shared by the cells of one
# process; only the most recent few are held (tables can be large).
_CACHE: dict[tuple, dict] = {}
_CACHE_SIZE = 4


def _cached(key: tuple, ds: Dataset, build: Callable[[], dict]) -> dict:
    # the entry holds the dataset itself, so its id (in the key) cannot be reused meanwhile
    entry = _CACHE.get(key)
    if entry is None or entry["dataset"] is not ds:
        while len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        entry = _CACHE[key] = {**build(), "dataset": ds}
    return entry


def clear_cache() -> None:
    _CACHE.clear()


def _key(kind, ds, model_name, cfg, seed) -> tuple:
    return (kind, id(ds), model_name, json.dumps(asdict(cfg), sort_keys=True), seed)


def _quiet(_: str) -> None:
    pass


def _cell(method, ds, model, cfg, budget, seed, t0, kept, stored, **extra) -> dict:
    kw = dict(k=cfg.k, device=cfg.device)
    return {
        "method": method,
        "budget": budget,
        "seed": seed,
        "valid": evaluate(model, ds.valid, ds.task, **kw),
        "test": evaluate(model, ds.test, ds.task, **kw),
        "kept_params": int(kept),
        "stored_bytes": int(stored),
        "seconds": time.perf_counter() - t0,
        **extra,
    }


def _block_boundaries_bytes(num_blocks: int) -> int:
    """Metadata of block dims stored as L dense tables: the L+1 int64 block boundaries."""
    return 8 * (num_blocks + 1)


def _budget_params(ds: Dataset, cfg: MethodConfig, budget: float, storage="ragged") -> int:
    """Entries a table may keep: budget·N·K, or with ``budget_unit="bytes"`` the fp32
    values that fit in budget·4·N·K bytes once the metadata is paid — a ragged table's
    masks and offsets, or (``storage="blocks"``) the block boundaries of per-block tables."""
    n, k = ds.num_features, cfg.dim
    if cfg.budget_unit == "params":
        return round(budget * n * k)
    if storage == "blocks":
        what, meta = "block boundaries", _block_boundaries_bytes(cfg.num_blocks)
    else:
        what, meta = "ragged metadata", ragged_metadata_bytes(n, k)
    room = math.floor(budget * 4 * n * k) - meta
    if room < 4:
        raise InfeasibleBudget(
            f"{budget * 4 * n * k:,.0f} bytes do not hold the {what} ({meta:,} B) of {n:,} rows"
        )
    return min(room // 4, n * k)


def _block_tables_bytes(sizes: list[int], dims: list[int]) -> int:
    """Bytes of block dims stored as L dense fp32 tables plus their boundaries."""
    return 4 * sum(s * d for s, d in zip(sizes, dims)) + _block_boundaries_bytes(len(sizes))


def _check_pruner(model_name: str, pruner: str) -> None:
    if pruner == "rot" and model_name not in ROTATION_MODELS:
        raise NotApplicable(f"rotation is exact only for {', '.join(ROTATION_MODELS)}")


def _prune(model_name: str, embedding, keep: int, pruner: str):
    """(pruned table, report) of ``embedding`` at ``keep`` entries with ``pruner``
    ("elem": DNIS's element-wise magnitude pruning, "aligned", "floor", "rot")."""
    if pruner == "elem":
        return merge_and_prune(embedding, keep=keep)
    merged = merged_table(embedding)
    if pruner == "rot":
        _check_pruner(model_name, pruner)
        merged = rotate_table(merged)
        return prune(merged, keep=keep)
    if pruner == "floor":
        try:
            table, mask = floor_prune(merged, keep)
        except ValueError as exc:
            raise InfeasibleBudget(str(exc)) from None
    else:
        table, mask = aligned_prune(merged, keep)
    report = PruneReport(nnz=int(mask.sum()), numel=mask.numel(), tau=0.0, dims=mask.sum(1))
    return table, report


def finetune_pruned(ds, model, pruned, cfg, seed, log) -> nn.Module:
    """Retrain for up to ``cfg.finetune_epochs`` with the pruned entries held at zero;
    returns the ragged model (no retraining when finetune_epochs is 0)."""
    if cfg.finetune_epochs <= 0:
        return to_ragged_model(model, pruned)
    cfg_d = dict(model.config)
    masked = MaskedEmbedding(pruned, pruned != 0)
    tuned = build_model(cfg_d.pop("name"), embedding=masked, **cfg_d)
    rest = {k: v for k, v in model.state_dict().items() if not k.startswith("embedding.")}
    tuned.load_state_dict(rest, strict=False)
    fit(tuned, ds, cfg.train_config(seed, cfg.finetune_epochs), log=log)
    return to_ragged_model(tuned, masked.weight.detach() * masked.mask)


def _train_uniform(ds, model_name, cfg, d, seed, log) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model(model_name, ds.num_features, ds.num_fields, d, **cfg.model_kwargs)
    fit(model, ds, cfg.train_config(seed), log=log)
    return model


def run_uniform(ds, model_name, cfg, budget, seed, log=_quiet) -> dict:
    t0 = time.perf_counter()
    d = max(1, math.floor(budget * cfg.dim + 1e-9))
    if d == cfg.dim:  # the uniform-K model: shared with magnitude*
        model = _uniform_k(ds, model_name, cfg, seed, log)["model"]
    else:
        model = _train_uniform(ds, model_name, cfg, d, seed, log)
    n = ds.num_features * d
    return _cell("uniform", ds, model, cfg, budget, seed, t0, n, 4 * n, dim=d)


def _uniform_k(ds, model_name, cfg, seed, log) -> dict:
    def build():
        t = time.perf_counter()
        model = _train_uniform(ds, model_name, cfg, cfg.dim, seed, log)
        return {"model": model, "seconds": time.perf_counter() - t}

    return _cached(_key("uniform-K", ds, model_name, cfg, seed), ds, build)


def _searched(ds, model_name, cfg, seed, log) -> dict:
    def build():
        scfg = cfg.search_config(seed)
        model = build_search_model(ds, model_name, scfg, **cfg.model_kwargs)
        result = search(model, ds, scfg, log=log)
        return {"model": model, "seconds": result.warmup_seconds + result.search_seconds}

    return _cached(_key("dnis-search", ds, model_name, cfg, seed), ds, build)


def _name(base: str, pruner: str, finetune: bool) -> str:
    return (
        base
        + {"elem": "", "aligned": "_aligned", "floor": "_floor", "rot": "_rot"}[pruner]
        + ("_ft" if finetune else "")
    )


def run_dnis(ds, model_name, cfg, budget, seed, log=_quiet, finetune=False, pruner="elem") -> dict:
    t0 = time.perf_counter()
    _check_pruner(model_name, pruner)  # before training anything
    keep = _budget_params(ds, cfg, budget)
    searched = _searched(ds, model_name, cfg, seed, log)
    t_pruned = time.perf_counter()  # this budget's own time starts: the search is shared
    model = searched["model"]
    pruned, report = _prune(model_name, model.embedding, keep, pruner)
    boundaries = model.embedding.boundaries
    if finetune:
        serving = finetune_pruned(ds, model, pruned, cfg, seed, log)
    else:
        serving = to_ragged_model(model, pruned)
    return _cell(
        _name("dnis", pruner, finetune),
        ds,
        serving,
        cfg,
        budget,
        seed,
        t0,
        report.nnz,
        serving.embedding.nbytes(),
        block_mean_dims=report.block_mean_dims(boundaries),
        alpha_mean=model.embedding.alpha.detach().mean(1).tolist(),
        search_seconds=searched["seconds"],
        # prune (+ fine-tune) of this budget; an argument, so evaluation is not in it
        prune_seconds=time.perf_counter() - t_pruned,
    )


def run_magnitude(
    ds, model_name, cfg, budget, seed, log=_quiet, finetune=False, pruner="elem"
) -> dict:
    t0 = time.perf_counter()
    _check_pruner(model_name, pruner)  # before training anything
    keep = _budget_params(ds, cfg, budget)
    trained = _uniform_k(ds, model_name, cfg, seed, log)
    model = trained["model"]
    pruned, report = _prune(model_name, model.embedding, keep, pruner)
    if finetune:
        serving = finetune_pruned(ds, model, pruned, cfg, seed, log)
    else:
        serving = to_ragged_model(model, pruned)
    boundaries = make_boundaries(ds.num_features, num_blocks=cfg.num_blocks)
    return _cell(
        _name("magnitude", pruner, finetune),
        ds,
        serving,
        cfg,
        budget,
        seed,
        t0,
        report.nnz,
        serving.embedding.nbytes(),
        block_mean_dims=report.block_mean_dims(boundaries),
        train_seconds=trained["seconds"],
    )


def _block_sizes(ds, cfg) -> tuple[torch.Tensor, list[int]]:
    b = make_boundaries(ds.num_features, num_blocks=cfg.num_blocks)
    return b, (b[1:] - b[:-1]).tolist()


def mde_block_dims(
    mean_freq: list[float], sizes: list[int], dim: int, budget_params: int, exponent: float
) -> list[int]:
    """Block dims d_l = clip(round(c · mean_freq_l^a), 1, dim), c the largest scale whose
    parameter count Σ size_l·d_l fits the budget (bisection)."""
    return scaled_block_dims(
        [max(x, 1e-12) ** exponent for x in mean_freq], sizes, dim, budget_params
    )


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


def _train_block_dims(ds, model_name, cfg, boundaries, dims, seed, log):
    torch.manual_seed(seed)
    emb = MaskedEmbedding.from_block_dims(ds.num_features, cfg.dim, boundaries, dims)
    model = build_model(
        model_name, ds.num_features, ds.num_fields, cfg.dim, embedding=emb, **cfg.model_kwargs
    )
    result = fit(model, ds, cfg.train_config(seed), log=log)
    return model, result


def _block_dims_cell(
    method, ds, model, cfg, budget, seed, t0, sizes, dims, storage, **extra
) -> dict:
    """Report a trained block-dims model: exported ragged (prefix masks) and counted by
    its nbytes(), or (``storage="blocks"``) counted as per-block dense tables — the
    masked model's outputs are exactly those of the per-block tables."""
    kept = sum(s * d for s, d in zip(sizes, dims))
    if storage == "blocks":
        nbytes = _block_tables_bytes(sizes, dims)
        serving = model
    else:
        serving = to_ragged_model(model, model.embedding.weight.detach() * model.embedding.mask)
        nbytes = serving.embedding.nbytes()
    return _cell(method, ds, serving, cfg, budget, seed, t0, kept, nbytes, block_dims=dims, **extra)


def run_dnis_blocks(ds, model_name, cfg, budget, seed, log=_quiet) -> dict:
    """DNIS as a block-dimension search: its element-wise pruning at the budget gives a
    mean kept dimension per frequency block; those, scaled to fit the budget
    (:func:`scaled_block_dims`), are trained from scratch and stored like ``mde_blocks``
    — one dense table per block. Same storage and training as ``mde_blocks``, dims from
    α instead of a frequency power law."""
    t0 = time.perf_counter()
    boundaries, sizes = _block_sizes(ds, cfg)
    budget_params = _budget_params(ds, cfg, budget, storage="blocks")
    searched = _searched(ds, model_name, cfg, seed, log)
    t_own = time.perf_counter()  # this budget's own time starts: the search is shared
    _, report = _prune(model_name, searched["model"].embedding, budget_params, "elem")
    means = report.block_mean_dims(boundaries)
    dims = scaled_block_dims(means, sizes, cfg.dim, budget_params)
    model, _ = _train_block_dims(ds, model_name, cfg, boundaries, dims, seed, log)
    return _block_dims_cell(
        "dnis_blocks", ds, model, cfg, budget, seed, t0, sizes, dims, "blocks",
        block_mean_dims=means, search_seconds=searched["seconds"],
        prune_seconds=time.perf_counter() - t_own,  # prune + train: dnis_wall_seconds
    )  # fmt: skip


def run_mde(ds, model_name, cfg, budget, seed, log=_quiet, storage="ragged") -> dict:
    t0 = time.perf_counter()
    boundaries, sizes = _block_sizes(ds, cfg)
    freq = torch.as_tensor(ds.encoder.frequencies, dtype=torch.float64)
    mean_freq = [float(freq[a:b].mean()) for a, b in zip(boundaries[:-1], boundaries[1:])]
    budget_params = _budget_params(ds, cfg, budget, storage)
    dims = mde_block_dims(mean_freq, sizes, cfg.dim, budget_params, cfg.mde_exponent)
    model, _ = _train_block_dims(ds, model_name, cfg, boundaries, dims, seed, log)
    return _block_dims_cell(
        "mde", ds, model, cfg, budget, seed, t0, sizes, dims, storage, exponent=cfg.mde_exponent
    )


MAX_TIMED_TRIALS = 1000  # a time-matched random search stops here whatever time is left


def another_trial(durations: list[float], elapsed: float, trials: int, time_budget=None) -> bool:
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
    ds, model_name, cfg, budget, seed, log=_quiet, storage="ragged", time_budget=None
) -> dict:
    """Random search over block dims: ``cfg.random_trials`` trials, or as many as fit
    ``time_budget`` seconds (see :func:`another_trial`); the best on validation."""
    t0 = time.perf_counter()
    boundaries, sizes = _block_sizes(ds, cfg)
    budget_params = _budget_params(ds, cfg, budget, storage)
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
        model, result = _train_block_dims(ds, model_name, cfg, boundaries, dims, seed, log)
        durations.append(time.perf_counter() - start)
        value = result.valid[metric]
        if best is None or (value < best[0] if direction == "min" else value > best[0]):
            best = (value, model, dims)
    _, model, dims = best
    extra = {} if time_budget is None else {"time_budget_seconds": time_budget}
    return _block_dims_cell(
        "random", ds, model, cfg, budget, seed, t0, sizes, dims, storage,
        trials=len(durations), **extra,
    )  # fmt: skip


def dnis_wall_seconds(cell: dict) -> float:
    """DNIS's wall time for one cell's budget: the shared search plus the budget's own
    time (``prune_seconds``: prune, + fine-tune; ``dnis_blocks``: + training). Cells
    written before ``prune_seconds`` was recorded count their whole time instead, which
    also holds the search when that cell ran it: at most twice the search too much, in
    the time-matched baseline's favour."""
    if "search_seconds" not in cell:
        raise ValueError(f"{cell.get('method')!r} cells carry no search time to match")
    return cell["search_seconds"] + cell.get("prune_seconds", cell["seconds"])


RUNNERS = {
    "uniform": run_uniform,
    "dnis_blocks": run_dnis_blocks,
    "mde": run_mde,
    "mde_blocks": functools.partial(run_mde, storage="blocks"),
    "random": run_random,
    "random_blocks": functools.partial(run_random, storage="blocks"),
}
for _base, _run in (("dnis", run_dnis), ("magnitude", run_magnitude)):
    for _pruner in ("elem", "aligned", "floor", "rot"):
        for _ft in (False, True):
            RUNNERS[_name(_base, _pruner, _ft)] = functools.partial(
                _run, finetune=_ft, pruner=_pruner
            )
# the full-warm-start variants run dnis / dnis_ft with warmup_epochs = epochs (run_method)
WARM_START = {"dnis_warm": "dnis", "dnis_warm_ft": "dnis_ft"}
RUNNERS.update({m: RUNNERS[base] for m, base in WARM_START.items()})
RUNNERS = {m: RUNNERS[m] for m in METHODS}


TIME_MATCHED = ("random", "random_blocks")  # take @m: the wall time of DNIS method m
VALID = f"{', '.join(METHODS)}, mde@a, mde_blocks@a, random@m, random_blocks@m (m: dnis*)"


def time_reference(method: str) -> str | None:
    """The DNIS method whose wall time ``method`` matches (``random_blocks@dnis_ft`` →
    ``dnis_ft``), or None."""
    base, at, arg = method.partition("@")
    return arg if at and base in TIME_MATCHED else None


def parse_method(method: str) -> tuple[str, dict]:
    """``"mde@0.5"`` → ("mde", {"mde_exponent": 0.5}) (also ``mde_blocks@a``);
    ``"random_blocks@dnis_ft"`` → ("random_blocks", {}) (see :func:`time_reference`); any
    other name → (name, {})."""
    base, at, arg = method.partition("@")
    if at and base in TIME_MATCHED:
        if not (arg in RUNNERS and arg.startswith("dnis")):
            dnis = ", ".join(m for m in METHODS if m.startswith("dnis"))
            raise ValueError(
                f"{base}@m matches the wall time of a DNIS method m ({dnis}), got {method!r}"
            )
        return base, {}
    if at:
        if base not in ("mde", "mde_blocks"):
            raise ValueError(
                f"only mde and random take a parameter (mde@a, random@m), got {method!r}"
            )
        try:
            return base, {"mde_exponent": float(arg)}
        except ValueError:
            raise ValueError(f"mde@a needs a number a, got {method!r}") from None
    if method not in RUNNERS:
        raise ValueError(f"unknown method {method!r}; valid: {VALID}")
    return method, {}


def run_method(
    method, ds, model_name, cfg: MethodConfig, budget, seed, log=_quiet, time_budget=None
) -> dict:
    """One cell: ``method`` on ``ds`` with ``model_name`` at ``budget`` (a fraction of N·K
    parameters, or of the uniform-K dense bytes with ``budget_unit="bytes"``).
    ``time_budget``: the seconds of a time-matched method (``random_blocks@dnis_ft``)."""
    base, overrides = parse_method(method)
    if not 0 < budget <= 1:
        raise ValueError(f"budget must be in (0, 1], got {budget}")
    ref = time_reference(method)
    if (ref is None) != (time_budget is None):
        raise ValueError(
            f"{method!r} needs time_budget (the wall time of its {ref} cell: compare reads it)"
            if ref
            else f"time_budget is for time-matched methods (random@m), not {method!r}"
        )
    cell_cfg = replace(cfg, **overrides) if overrides else cfg
    if base in WARM_START:
        cell_cfg = replace(cell_cfg, warmup_epochs=cell_cfg.epochs)
    extra = {} if ref is None else {"time_budget": time_budget}
    cell = RUNNERS[base](ds, model_name, cell_cfg, budget, seed, log, **extra)
    cell["method"] = method
    cell["config"] = asdict(cell_cfg)
    return cell
