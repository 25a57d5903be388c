"""DNIS at a budget: search α once per seed, merge it into the table, prune, serve.

* ``dnis``: search α, merge, prune element-wise to the budget; ``dnis_ft`` then
  fine-tunes with the mask fixed for ``finetune_epochs`` (early stopping on validation);
* ``dnis_aligned`` (``_ft``): DNIS's per-feature dimensions (the element-wise pruning's
  count per row), kept at positions shared by every feature (one global column order),
  so two features' kept dimensions always overlap in dot products (see
  :func:`mixemb.prune.aligned_prune`);
* ``dnis_floor`` (``_ft``): element-wise pruning in which every feature first keeps its
  largest entry (:func:`mixemb.prune.floor_prune`): at small budgets plain DNIS leaves
  the rarest features with no dimension at all (half of them at 5 % of the bytes on
  ML-1M rating NeuMF);
* ``dnis_rot`` (``_ft``): Ê is first rotated onto its right singular vectors (Ê·V, V
  orthogonal), then pruned element-wise like ``dnis``. Exact only for models whose
  embeddings meet in dot products alone (MF, FM): other models are skipped;
* ``dnis_warm`` (``_ft``): DNIS whose warm start is the plain trainer's whole schedule
  (up to ``epochs`` with early stopping, as the uniform-K model trains) instead of
  ``warmup_epochs``; the search then starts from a converged model. Its search time
  includes that warm start;
* ``dnis_blocks``: DNIS as a block-dimension search — the mean dimension its pruning
  keeps per frequency block, scaled to the budget, trained from scratch and stored as
  one dense table per block (like ``mde_blocks``): α's allocation at MDE's storage.

The search of a seed is shared by every budget and variant (:mod:`mixemb.methods.shared`);
each cell reports its wall time as ``search_seconds`` and its own (prune, fine-tune,
training) as ``prune_seconds``, which :func:`mixemb.methods.dnis_wall_seconds` adds up
for the time-matched baselines.
"""

from __future__ import annotations

import functools
import time

from mixemb.methods.base import Method
from mixemb.methods.blocks import block_dims_cell, block_sizes, scaled_block_dims, train_block_dims
from mixemb.methods.cells import keep_entries, prune_embedding, pruner_variants, run_pruned
from mixemb.methods.shared import full_warm_start, searched
from mixemb.prune.budget import STORAGE_DTYPES


def describe_dnis(ds, cfg, model, report, shared, own_seconds) -> dict:
    """A DNIS cell's own keys: the kept dims per block, α, and its times."""
    return dict(
        block_mean_dims=report.block_mean_dims(model.embedding.boundaries),
        alpha_mean=model.embedding.alpha.detach().mean(1).tolist(),
        search_seconds=shared["seconds"],
        prune_seconds=own_seconds,  # prune (+ fine-tune) of this budget
    )


def run_dnis_blocks(ds, model_name, cfg, budget, seed, log, value_dtype="fp32") -> dict:
    """DNIS as a block-dimension search: its element-wise pruning at the budget gives a
    mean kept dimension per frequency block; those, scaled to fit the budget
    (:func:`scaled_block_dims`), are trained from scratch and stored like ``mde_blocks``
    — one dense table per block. Same storage and training as ``mde_blocks``, dims from
    α instead of a frequency power law."""
    t0 = time.perf_counter()
    boundaries, sizes = block_sizes(ds, cfg)
    budget_params = keep_entries(ds, cfg, budget, "blocks", value_dtype)
    shared = searched(ds, model_name, cfg, seed, log)
    t_own = time.perf_counter()  # this budget's own time starts: the search is shared
    _, report = prune_embedding(model_name, shared["model"].embedding, budget_params, "elem")
    means = report.block_mean_dims(boundaries)
    dims = scaled_block_dims(means, sizes, cfg.dim, budget_params)
    model, _ = train_block_dims(ds, model_name, cfg, boundaries, dims, seed, log)
    return block_dims_cell(
        "dnis_blocks", ds, model, cfg, budget, seed, t0, sizes, dims, "blocks", value_dtype,
        block_mean_dims=means, search_seconds=shared["seconds"],
        prune_seconds=time.perf_counter() - t_own,  # prune + train: dnis_wall_seconds
    )  # fmt: skip


METHODS = (
    *pruner_variants("dnis", searched, describe_dnis, searches=True),
    # the search's warm start is the plain trainer's schedule; element-wise pruning only
    *(
        Method(
            f"dnis_warm{ft}",
            functools.partial(
                run_pruned,
                name=f"dnis_warm{ft}",
                finetune=bool(ft),
                pruner="elem",
                trained=searched,
                describe=describe_dnis,
            ),  # fmt: skip
            searches=True,
            configure=full_warm_start,
            value_dtypes=STORAGE_DTYPES["ragged"],
        )
        for ft in ("", "_ft")
    ),
    Method("dnis_blocks", run_dnis_blocks, searches=True, value_dtypes=STORAGE_DTYPES["blocks"]),
)
