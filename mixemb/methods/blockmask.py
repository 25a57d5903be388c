"""One set of dimensions per frequency block: searched or trained weights, no per-row metadata.

A table pruned to an L×K block mask keeps, for every row of block l, the same columns; it
is stored as one dense (rows_l, d_l) table per block plus the L×K mask bits and the L+1
boundaries (storage ``"blockmask"``, :mod:`mixemb.prune.budget`). The weights are kept,
not retrained from scratch: Ê of the source model on the mask, optionally fine-tuned with
the mask fixed (``_ft``, early stopping on validation).

* ``dnis_blockmask`` (``_ft``): the source is the DNIS search (shared with ``dnis``),
  Ê = E ⊙ α[block]; each block's columns are scored by s_lk = RMS of Ê[:, k] over the
  block's rows (= α_lk · RMS of E[:, k]); every block first keeps its best column, then
  columns go greedily by s_lk² per stored byte until the byte budget is spent
  (:func:`mixemb.prune.pruners.block_mask_prune`);
* ``dnis_blockmask_rot`` (``_ft``): Ê is first rotated onto its right singular vectors
  (Ê·V, V orthogonal; :func:`mixemb.prune.rotate_table`), so its energy sits in the leading
  columns and the blocks' column sets nest: two features of different blocks then share
  min(d_l, d_m) dimensions in a dot product instead of a chance overlap;
* ``dnis_warm_blockmask_rot_ft``: the same on a search whose warm start is the plain
  trainer's whole schedule (early-stopped, as uniform-K trains), the authors' protocol;
* ``dnis_held_out_blockmask_rot_ft``: the same on a search whose α steps run on 10 % of
  the training rows, held out of the table's training, instead of on the validation
  split, which then only scores (selection on it is not flattered by α having fit it);
* ``dnis_warm_lookupmask_rot_ft`` / ``magnitude_lookupmask_rot_ft``: the warm-start and
  the uniform-K variants with each row's squares weighted by its lookups in the training
  split before the columns are scored (:func:`mixemb.prune.pruners.block_column_scores`);
  ``*_sqrtlookupmask_rot_ft``: weighted by the square root of the lookups instead;
* ``magnitude_blockmask_ft`` / ``magnitude_blockmask_rot_ft``: the same allocation on the
  trained uniform-K model's table (no α): what the block layout gives without the search;
* ``svd_ft``: the trained uniform-K table rotated onto its singular vectors and truncated
  to the d leading columns a dense (N, d) table affords at the budget and dtype, then
  fine-tuned: the dense truncated-SVD baseline.

Rotation is exact for models whose embeddings meet only in dot products (MF, FM) or enter
a linear layer first (MLP, Wide&Deep, DeepFM: that layer absorbs V, see
:meth:`mixemb.models.RecModel.absorb_rotation`); NeuMF's element-wise GMF is not, and is
skipped. Every feature keeps at least one dimension. At a value dtype
(``dnis_blockmask_rot_ft:int8``) the budget buys that many more values; training stays
fp32 and the tuned table is then served as it is stored, a :class:`BlockTable` of that
dtype (:func:`block_table_model`; its ``nbytes()`` is the cell's stored bytes). ``svd_ft``
is evaluated on its dense table's values rounded to the dtype.
"""

from __future__ import annotations

import copy
import functools
import time

import torch
from torch import nn

from mixemb.block_table import BlockTable
from mixemb.methods.base import Method, NotApplicable
from mixemb.methods.blocks import block_sizes
from mixemb.methods.cells import keep_entries, make_cell
from mixemb.methods.shared import full_warm_start, searched, uniform_k
from mixemb.models import MODELS
from mixemb.nn.block_table import BlockTableEmbedding
from mixemb.prune import merged_table, uniform_dim
from mixemb.prune.budget import STORAGE_DTYPES, dense_bytes
from mixemb.prune.finetune import dense_state, finetune_masked, masked_model, on_embedding
from mixemb.prune.pruners import block_mask_prune, expand_block_mask, singular_vectors

# where a block mask's table comes from: the DNIS search (α on validation batches, or on
# 10 % of the training rows held out of the table's), or the trained uniform-K model
HELD_OUT_FRACTION = 0.1
SOURCES = {
    "dnis": searched,
    "dnis_held_out": functools.partial(searched, alpha_split=HELD_OUT_FRACTION),
    "magnitude": uniform_k,
}


def run_blockmask(
    ds, model_name, cfg, budget, seed, log, value_dtype="fp32", *,
    name, source, rotate, finetune, prefix=False, lookup_weights=None,
) -> dict:  # fmt: skip
    """One cell of a block-mask method: ``source`` a key of :data:`SOURCES`; ``prefix``:
    every block keeps the same d leading columns, stored dense; ``lookup_weights`` None,
    "count" or "sqrt": each row's squares weighted by its training lookups (or their square
    root) when the block mask is allocated."""
    t0 = time.perf_counter()
    if rotate and not MODELS[model_name].absorbs_rotation:  # before training anything
        raise NotApplicable(f"a rotation of {model_name}'s embeddings is not exact")
    boundaries, sizes = block_sizes(ds, cfg)
    if prefix:
        d = uniform_dim(budget, cfg.dim, unit=cfg.budget_unit, value_dtype=value_dtype)
    else:
        keep = keep_entries(ds, cfg, budget, "blockmask", value_dtype)
    shared = SOURCES[source](ds, model_name, cfg, seed, log)
    t_own = time.perf_counter()  # this budget's own time starts: the source is shared
    model = shared["model"]
    merged = merged_table(model.embedding)
    if rotate:  # the shared model stays as it is: the rotation goes into a copy
        v = singular_vectors(merged)
        merged = (merged.double() @ v).to(merged.dtype)
        model = copy.deepcopy(model)
        model.absorb_rotation(v)
    if prefix:
        block_mask = torch.zeros(len(sizes), cfg.dim, dtype=torch.bool)
        block_mask[:, :d] = True
        rows = expand_block_mask(block_mask, boundaries)
        pruned = merged * rows
    else:
        weights = None
        if lookup_weights is not None:  # each id's lookups in the training split weigh its row
            weights = torch.bincount(ds.train.ids.flatten().long(), minlength=ds.num_features)
            weights = weights.double().sqrt() if lookup_weights == "sqrt" else weights
        pruned, block_mask = block_mask_prune(merged, boundaries, keep, weights)
        rows = expand_block_mask(block_mask, boundaries)
    if finetune and cfg.finetune_epochs > 0:
        tcfg = cfg.train_config(seed, cfg.finetune_epochs)
        serving = finetune_masked(ds, model, pruned, rows, tcfg, log)
    else:
        serving = masked_model(model, pruned, rows)
    serving.eval()
    own = time.perf_counter() - t_own  # measured here, so evaluation is not in it
    dims = block_mask.sum(1).tolist()
    kept = sum(s * d for s, d in zip(sizes, dims))
    rounded = value_dtype  # what make_cell rounds the served table's values to
    if prefix:
        stored = dense_bytes(ds.num_features, dims[0], value_dtype)
    else:
        serving = block_table_model(serving, boundaries, block_mask, value_dtype)
        stored, rounded = serving.embedding.nbytes(), "fp32"  # stored at value_dtype
    if source != "magnitude":
        extra = {
            "alpha_mean": model.embedding.alpha.detach().mean(1).tolist(),
            "search_seconds": shared["seconds"],
            "prune_seconds": own,  # prune (+ fine-tune) of this budget: dnis_wall_seconds
        }
    else:
        extra = {"train_seconds": shared["seconds"], "prune_seconds": own}
    return make_cell(
        name, ds, serving, cfg, budget, seed, t0, kept, stored, rounded,
        block_dims=dims,
        block_columns=[row.nonzero().flatten().tolist() for row in block_mask],
        **extra,
    )  # fmt: skip


def block_table_model(
    model: nn.Module, boundaries: torch.Tensor, block_mask: torch.Tensor, value_dtype: str
) -> nn.Module:
    """``model`` (eval mode) served from the :class:`BlockTable` of its MaskedEmbedding's
    table (N, K), zero outside ``block_mask`` (L, K) bool of the blocks ``boundaries``
    (L+1,) int64, stored in ``value_dtype``; rows come out float32 like its other weights."""
    pruned = model.embedding.masked_weight().cpu()
    table = BlockTable.from_block_mask(pruned, boundaries.cpu(), block_mask.cpu(), value_dtype)
    embedding = BlockTableEmbedding(table, out_dtype=torch.float32)
    return on_embedding(model.config, embedding, dense_state(model)).eval()


def _method(name: str, source: str, prefix: bool = False) -> Method:
    warm = name.startswith("dnis_warm")
    runner = functools.partial(
        run_blockmask,
        name=name,
        source=source,
        rotate="_rot" in name or prefix,
        lookup_weights=(
            "sqrt" if "_sqrtlookupmask" in name else "count" if "_lookupmask" in name else None
        ),
        finetune=name.endswith("_ft"),
        prefix=prefix,
    )
    storage = "dense" if prefix else "blockmask"
    return Method(
        name,
        runner,
        searches=source != "magnitude",
        configure=full_warm_start if warm else None,
        value_dtypes=STORAGE_DTYPES[storage],
    )


METHODS = (
    *(
        _method(name, "dnis")
        for name in (
            "dnis_blockmask", "dnis_blockmask_ft", "dnis_blockmask_rot", "dnis_blockmask_rot_ft",
            "dnis_warm_blockmask_rot_ft",
        )
    ),
    _method("dnis_held_out_blockmask_rot_ft", "dnis_held_out"),
    _method("dnis_warm_lookupmask_rot_ft", "dnis"),
    _method("magnitude_lookupmask_rot_ft", "magnitude"),
    _method("dnis_warm_sqrtlookupmask_rot_ft", "dnis"),
    _method("magnitude_sqrtlookupmask_rot_ft", "magnitude"),
    _method("magnitude_blockmask_ft", "magnitude"),
    _method("magnitude_blockmask_rot_ft", "magnitude"),
    _method("svd_ft", "magnitude", prefix=True),
)  # fmt: skip
