"""DNIS and its baselines at a parameter budget, each returning one result cell.

A budget is a fraction of the uniform-K table's N·K parameters. Every method goes
through the same data, model and trainer, and reports its validation and test metrics,
the parameters it keeps, the bytes it stores (ragged tables count their metadata; the
uniform baseline is stored dense) and its wall time. Selection uses validation only.

Methods:
* ``uniform``: one dimension d = floor(budget·K) for every feature (the grid's point);
* ``dnis``: search α, merge, prune to the budget; ``dnis_ft`` then fine-tunes with the
  mask fixed for ``finetune_epochs`` (early stopping on validation);
* ``magnitude``: train uniform-K, prune its table to the budget; ``magnitude_ft`` then
  fine-tunes the same way;
* ``mde``: block dims ∝ (mean frequency of the block)^a, budget-matched (Ginart et al.);
* ``random``: N random non-increasing block-dim vectors within the budget, best on valid.
"""

from __future__ import annotations

import functools
import math
import random
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from mixemb.data.schema import Dataset
from mixemb.metrics import primary_metric
from mixemb.models import build_model
from mixemb.nn import MaskedEmbedding, make_boundaries
from mixemb.search.dnis import SearchConfig, build_search_model, search
from mixemb.search.export import merge_and_prune, to_ragged_model
from mixemb.train.trainer import TrainConfig, evaluate, fit

METHODS = ("uniform", "dnis", "dnis_ft", "magnitude", "magnitude_ft", "mde", "random")


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


def _budget_params(ds: Dataset, cfg: MethodConfig, budget: float) -> int:
    return round(budget * ds.num_features * cfg.dim)


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


def run_uniform(ds, model_name, cfg, budget, seed, log=_quiet) -> dict:
    t0 = time.perf_counter()
    d = max(1, math.floor(budget * cfg.dim + 1e-9))
    torch.manual_seed(seed)
    model = build_model(model_name, ds.num_features, ds.num_fields, d, **cfg.model_kwargs)
    fit(model, ds, cfg.train_config(seed), log=log)
    n = ds.num_features * d
    return _cell("uniform", ds, model, cfg, budget, seed, t0, n, 4 * n, dim=d)


def run_dnis(ds, model_name, cfg, budget, seed, log=_quiet, finetune=False) -> dict:
    t0 = time.perf_counter()
    model = build_search_model(ds, model_name, cfg.search_config(seed), **cfg.model_kwargs)
    search(model, ds, cfg.search_config(seed), log=log)
    pruned, report = merge_and_prune(model.embedding, keep=_budget_params(ds, cfg, budget))
    boundaries = model.embedding.boundaries
    if finetune:
        serving = finetune_pruned(ds, model, pruned, cfg, seed, log)
    else:
        serving = to_ragged_model(model, pruned)
    return _cell(
        "dnis_ft" if finetune else "dnis",
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
    )


def run_magnitude(ds, model_name, cfg, budget, seed, log=_quiet, finetune=False) -> dict:
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    model = build_model(model_name, ds.num_features, ds.num_fields, cfg.dim, **cfg.model_kwargs)
    fit(model, ds, cfg.train_config(seed), log=log)
    pruned, report = merge_and_prune(model.embedding, keep=_budget_params(ds, cfg, budget))
    if finetune:
        serving = finetune_pruned(ds, model, pruned, cfg, seed, log)
    else:
        serving = to_ragged_model(model, pruned)
    boundaries = make_boundaries(ds.num_features, num_blocks=cfg.num_blocks)
    return _cell(
        "magnitude_ft" if finetune else "magnitude",
        ds,
        serving,
        cfg,
        budget,
        seed,
        t0,
        report.nnz,
        serving.embedding.nbytes(),
        block_mean_dims=report.block_mean_dims(boundaries),
    )


def _block_sizes(ds, cfg) -> tuple[torch.Tensor, list[int]]:
    b = make_boundaries(ds.num_features, num_blocks=cfg.num_blocks)
    return b, (b[1:] - b[:-1]).tolist()


def mde_block_dims(
    mean_freq: list[float], sizes: list[int], dim: int, budget_params: int, exponent: float
) -> list[int]:
    """Block dims d_l = clip(round(c · mean_freq_l^a), 1, dim), c the largest scale whose
    parameter count Σ size_l·d_l fits the budget (bisection)."""
    f = [max(x, 1e-12) ** exponent for x in mean_freq]

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


def _block_dims_cell(method, ds, model, cfg, budget, seed, t0, sizes, dims, **extra) -> dict:
    """Export a trained block-dims model ragged (prefix masks) and report it."""
    serving = to_ragged_model(model, model.embedding.weight.detach() * model.embedding.mask)
    kept = sum(s * d for s, d in zip(sizes, dims))
    nbytes = serving.embedding.nbytes()
    return _cell(method, ds, serving, cfg, budget, seed, t0, kept, nbytes, block_dims=dims, **extra)


def run_mde(ds, model_name, cfg, budget, seed, log=_quiet) -> dict:
    t0 = time.perf_counter()
    boundaries, sizes = _block_sizes(ds, cfg)
    freq = torch.as_tensor(ds.encoder.frequencies, dtype=torch.float64)
    mean_freq = [float(freq[a:b].mean()) for a, b in zip(boundaries[:-1], boundaries[1:])]
    dims = mde_block_dims(
        mean_freq, sizes, cfg.dim, _budget_params(ds, cfg, budget), cfg.mde_exponent
    )
    model, _ = _train_block_dims(ds, model_name, cfg, boundaries, dims, seed, log)
    return _block_dims_cell(
        "mde", ds, model, cfg, budget, seed, t0, sizes, dims, exponent=cfg.mde_exponent
    )


def run_random(ds, model_name, cfg, budget, seed, log=_quiet) -> dict:
    t0 = time.perf_counter()
    boundaries, sizes = _block_sizes(ds, cfg)
    budget_params = _budget_params(ds, cfg, budget)
    min_dim = max(1, min(cfg.min_block_dim, budget_params // ds.num_features))
    rng = random.Random(seed)
    metric, direction = primary_metric(ds.task, cfg.k)
    best = None
    for _ in range(cfg.random_trials):
        dims = random_block_dims(rng, sizes, cfg.dim, budget_params, min_dim)
        if dims is None:
            continue
        model, result = _train_block_dims(ds, model_name, cfg, boundaries, dims, seed, log)
        value = result.valid[metric]
        if best is None or (value < best[0] if direction == "min" else value > best[0]):
            best = (value, model, dims)
    if best is None:
        raise InfeasibleBudget(
            f"no block dims >= {min_dim} fit {budget_params:,} parameters (budget {budget:g})"
        )
    _, model, dims = best
    return _block_dims_cell(
        "random", ds, model, cfg, budget, seed, t0, sizes, dims, trials=cfg.random_trials
    )


RUNNERS = {
    "uniform": run_uniform,
    "dnis": run_dnis,
    "dnis_ft": functools.partial(run_dnis, finetune=True),
    "magnitude": run_magnitude,
    "magnitude_ft": functools.partial(run_magnitude, finetune=True),
    "mde": run_mde,
    "random": run_random,
}


def run_method(method, ds, model_name, cfg: MethodConfig, budget, seed, log=_quiet) -> dict:
    """One cell: ``method`` on ``ds`` with ``model_name`` at ``budget`` (fraction of N·K)."""
    if method not in RUNNERS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    if not 0 < budget <= 1:
        raise ValueError(f"budget must be in (0, 1], got {budget}")
    cell = RUNNERS[method](ds, model_name, cfg, budget, seed, log)
    cell["config"] = asdict(cfg)
    return cell
