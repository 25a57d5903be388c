"""Magnitude pruning of the trained uniform-K table (no search).

* ``magnitude``: train uniform-K, prune its table element-wise to the budget;
  ``magnitude_ft`` then fine-tunes with the mask fixed, like ``dnis_ft``;
* ``magnitude_rot`` (``_ft``): rotates the table first, like ``dnis_rot`` (MF, FM only).

The uniform-K model of a seed is trained once and shared with ``uniform`` at budget 1
(:mod:`mixemb.methods.shared`); each cell reports its training time as ``train_seconds``.
"""

from __future__ import annotations

from mixemb.methods.cells import pruner_variants
from mixemb.methods.shared import uniform_k


def describe_magnitude(ds, cfg, model, report, trained, own_seconds) -> dict:
    """A magnitude cell's own keys: the kept dims per block, the uniform-K training time."""
    boundaries = ds.block_boundaries(cfg.num_blocks)
    return dict(
        block_mean_dims=report.block_mean_dims(boundaries), train_seconds=trained["seconds"]
    )


METHODS = tuple(
    pruner_variants("magnitude", uniform_k, describe_magnitude, pruners=("elem", "rot"))
)
