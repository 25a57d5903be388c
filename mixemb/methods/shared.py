"""Trainings shared by the cells of one process: the DNIS search and the uniform-K model.

A comparison's cells at different budgets (and the ``_ft`` / ``_aligned`` / ``_rot`` …
variants) start from the same searched model of a seed, or the same trained uniform-K
model: each is trained once per (dataset, model, config, seed) and reused. Only the
most recent few are held (tables can be large); :func:`clear_cache` drops them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, replace

import torch
from torch import nn

from mixemb.data.schema import Dataset
from mixemb.methods.config import MethodConfig
from mixemb.models import build_model
from mixemb.search import build_search_model, search
from mixemb.train import fit

Log = Callable[[str], None]

# (kind, dataset id, model, config, seed) -> trained state
_CACHE: dict[tuple, dict] = {}
_CACHE_SIZE = 4


def _cached(kind: str, ds: Dataset, model_name: str, cfg: MethodConfig, seed: int, build) -> dict:
    key = (kind, id(ds), model_name, json.dumps(asdict(cfg), sort_keys=True), seed)
    # the entry holds the dataset itself, so its id (in the key) cannot be reused meanwhile
    entry = _CACHE.get(key)
    if entry is None or entry["dataset"] is not ds:
        while len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        entry = _CACHE[key] = {**build(), "dataset": ds}
    return entry


def clear_cache() -> None:
    """Drop every shared training of this process."""
    _CACHE.clear()


def train_uniform(
    ds: Dataset, model_name: str, cfg: MethodConfig, dim: int, seed: int, log: Log
) -> nn.Module:
    """A ``model_name`` model on a plain (N, ``dim``) table, trained with cfg's trainer."""
    torch.manual_seed(seed)
    model = build_model(model_name, ds.num_features, ds.num_fields, dim, **cfg.model_kwargs)
    fit(model, ds, cfg.train_config(seed), log=log)
    return model


def uniform_k(ds: Dataset, model_name: str, cfg: MethodConfig, seed: int, log: Log) -> dict:
    """{"model": the trained uniform-K model, "seconds": its training time}, shared."""

    def build() -> dict:
        t = time.perf_counter()
        model = train_uniform(ds, model_name, cfg, cfg.dim, seed, log)
        return {"model": model, "seconds": time.perf_counter() - t}

    return _cached("uniform-K", ds, model_name, cfg, seed, build)


def full_warm_start(cfg: MethodConfig) -> MethodConfig:
    """``cfg`` with the search's warm start as long as the plain trainer's schedule (up to
    ``epochs``, early-stopped on validation): the ``dnis_warm*`` methods' config."""
    return replace(cfg, warmup_epochs=cfg.epochs)


def searched(
    ds: Dataset, model_name: str, cfg: MethodConfig, seed: int, log: Log, alpha_split: float = 0.0
) -> dict:
    """{"model": the DNIS-searched model (α trained), "seconds": warm start + search},
    shared. alpha_split: α's steps on that fraction of the training rows, held out of the
    table's (0: on the validation split; :class:`mixemb.search.SearchConfig`)."""

    def build() -> dict:
        scfg = replace(cfg.search_config(seed), alpha_split=alpha_split)
        model = build_search_model(ds, model_name, scfg, **cfg.model_kwargs)
        result = search(model, ds, scfg, log=log)
        return {"model": model, "seconds": result.warmup_seconds + result.search_seconds}

    kind = "dnis-search" if not alpha_split else f"dnis-search-held-out-{alpha_split}"
    return _cached(kind, ds, model_name, cfg, seed, build)
