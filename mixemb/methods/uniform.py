"""``uniform``: one dimension d = floor(budget·K) for every feature, stored dense.

At budget 1.0 it is the uniform-K reference model, the one ``magnitude*`` prunes
(trained once per seed, see :mod:`mixemb.methods.shared`).
"""

from __future__ import annotations

import time

from mixemb.methods.base import Method
from mixemb.methods.cells import make_cell
from mixemb.methods.shared import train_uniform, uniform_k
from mixemb.prune import REFERENCE_VALUE_BYTES, uniform_dim


def run_uniform(ds, model_name, cfg, budget, seed, log) -> dict:
    t0 = time.perf_counter()
    d = uniform_dim(budget, cfg.dim)
    if d == cfg.dim:  # the uniform-K model: shared with magnitude*
        model = uniform_k(ds, model_name, cfg, seed, log)["model"]
    else:
        model = train_uniform(ds, model_name, cfg, d, seed, log)
    n = ds.num_features * d
    return make_cell(
        "uniform", ds, model, cfg, budget, seed, t0, n, REFERENCE_VALUE_BYTES * n, dim=d
    )


METHODS = (Method("uniform", run_uniform),)
