"""What the methods share: one result cell, and a pruned table made servable.

A cell reports a method's validation and test metrics, the parameters it keeps, the
bytes it stores (ragged tables count their metadata; block and dense tables their own
layout; all at their value dtype, :mod:`mixemb.prune.budget`) and its wall time; extra
keys are the method's own. A model is trained in fp32 and evaluated with its stored
values rounded to the cell's value dtype (:func:`mixemb.prune.finetune.stored_model`).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from mixemb.data.schema import Dataset
from mixemb.methods.base import Method, NotApplicable
from mixemb.methods.config import MethodConfig
from mixemb.prune import (
    PRUNERS,
    PruneReport,
    budget_keep,
    finetune_pruned,
    merged_table,
    prune_table,
    to_ragged_model,
)
from mixemb.prune.budget import STORAGE_DTYPES, ragged_bytes
from mixemb.prune.finetune import stored_model
from mixemb.train import evaluate

ROTATION_MODELS = ("mf", "fm")  # embeddings only meet in dot products: E·V is exact
PRUNER_SUFFIX = {"elem": "", "aligned": "_aligned", "floor": "_floor", "rot": "_rot"}


def make_cell(
    method: str,
    ds: Dataset,
    model: nn.Module,
    cfg: MethodConfig,
    budget: float,
    seed: int,
    t0: float,
    kept: int,
    stored: int,
    value_dtype: str = "fp32",
    **extra,
) -> dict:
    """The cell of ``model`` (evaluated on valid and test with its stored values in
    ``value_dtype``), started at ``t0`` (``time.perf_counter()``)."""
    kw = dict(k=cfg.k, device=cfg.device)
    model = stored_model(model, value_dtype)
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


def keep_entries(
    ds: Dataset, cfg: MethodConfig, budget: float, storage="ragged", dtype="fp32"
) -> int:
    """Entries a (N, K) table may keep at ``budget`` in ``storage`` (str) with ``dtype``
    values (str, a value dtype; see :func:`mixemb.prune.budget_keep`)."""
    return budget_keep(
        budget,
        ds.num_features,
        cfg.dim,
        unit=cfg.budget_unit,
        storage=storage,
        num_blocks=cfg.num_blocks,
        value_dtype=dtype,
    )


def check_pruner(model_name: str, pruner: str) -> None:
    """Raise NotApplicable where ``pruner`` would change what ``model_name`` predicts."""
    if pruner == "rot" and model_name not in ROTATION_MODELS:
        raise NotApplicable(f"rotation is exact only for {', '.join(ROTATION_MODELS)}")


def prune_embedding(
    model_name: str, embedding: nn.Module, keep: int, pruner: str
) -> tuple[torch.Tensor, PruneReport]:
    """(pruned (N, K), report) of ``embedding``'s merged table at ``keep`` entries."""
    check_pruner(model_name, pruner)
    return prune_table(merged_table(embedding), keep, pruner)


def serve_pruned(
    ds: Dataset,
    model: nn.Module,
    pruned: torch.Tensor,
    cfg: MethodConfig,
    seed: int,
    log: Callable[[str], None],
    finetune: bool,
) -> nn.Module:
    """The ragged model of ``pruned`` (N, K), after up to ``cfg.finetune_epochs`` of
    fine-tuning with the mask fixed when ``finetune`` (none when that is 0)."""
    if not finetune or cfg.finetune_epochs <= 0:
        return to_ragged_model(model, pruned)
    return finetune_pruned(ds, model, pruned, cfg.train_config(seed, cfg.finetune_epochs), log)


def run_pruned(
    ds: Dataset,
    model_name: str,
    cfg: MethodConfig,
    budget: float,
    seed: int,
    log: Callable[[str], None],
    value_dtype: str = "fp32",
    *,
    name: str,
    finetune: bool,
    pruner: str,
    trained: Callable[..., dict],
    describe: Callable[..., dict],
) -> dict:
    """The runner of a pruning method: the shared ``trained(ds, model_name, cfg, seed,
    log)`` model ({"model", "seconds"}) pruned to the budget with ``pruner``, fine-tuned
    when ``finetune``, served ragged with ``value_dtype`` values. ``describe(ds, cfg,
    model, report, trained, own_seconds)`` gives the cell's own keys (own_seconds: prune
    + fine-tune, the shared training not counted)."""
    t0 = time.perf_counter()
    check_pruner(model_name, pruner)  # before training anything
    keep = keep_entries(ds, cfg, budget, "ragged", value_dtype)
    shared = trained(ds, model_name, cfg, seed, log)
    t_own = time.perf_counter()  # this budget's own time starts: the training is shared
    model = shared["model"]
    pruned, report = prune_embedding(model_name, model.embedding, keep, pruner)
    serving = serve_pruned(ds, model, pruned, cfg, seed, log, finetune)
    own = time.perf_counter() - t_own  # measured here, so evaluation is not in it
    emb = serving.embedding
    stored = ragged_bytes(emb.num_embeddings, emb.embedding_dim, emb.values.numel(), value_dtype)
    return make_cell(
        name,
        ds,
        serving,
        cfg,
        budget,
        seed,
        t0,
        report.nnz,
        stored,
        value_dtype,
        **describe(ds, cfg, model, report, shared, own),
    )


def pruner_variants(
    base: str,
    trained: Callable[..., dict],
    describe: Callable[..., dict],
    pruners: Sequence[str] = PRUNERS,
    **method: object,
) -> list[Method]:
    """``base``, ``base_ft``, ``base_aligned``, … : :func:`run_pruned` of ``trained`` with
    each of ``pruners``, without and with fine-tuning. ``method``: further Method fields
    of every variant."""
    out = []
    for pruner in pruners:
        for finetune in (False, True):
            name = base + PRUNER_SUFFIX[pruner] + ("_ft" if finetune else "")
            runner = functools.partial(
                run_pruned, name=name, finetune=finetune, pruner=pruner, trained=trained,
                describe=describe,
            )  # fmt: skip
            out.append(Method(name, runner, value_dtypes=STORAGE_DTYPES["ragged"], **method))
    return out
