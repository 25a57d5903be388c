"""``uniform``: one dimension d = floor(budget·K) for every feature, stored dense.

At a value dtype (``uniform:fp16``, ``uniform:int8``) and a byte budget, d is the most
values a row affords at that dtype (:func:`mixemb.prune.uniform_dim`; at 5 % of the
bytes of K = 64, d = 6 in fp16), at most K. At d = K it is the uniform-K reference model,
the one ``magnitude*`` prunes (trained once per seed, see :mod:`mixemb.methods.shared`).
"""

from __future__ import annotations

import time

from mixemb.methods.base import Method
from mixemb.methods.cells import make_cell
from mixemb.methods.shared import train_uniform, uniform_k
from mixemb.prune import uniform_dim
from mixemb.prune.budget import dense_bytes
from mixemb.quant import VALUE_DTYPES


def run_uniform(ds, model_name, cfg, budget, seed, log, value_dtype="fp32") -> dict:
    t0 = time.perf_counter()
    d = uniform_dim(budget, cfg.dim, unit=cfg.budget_unit, value_dtype=value_dtype)
    if d == cfg.dim:  # the uniform-K model: shared with magnitude*
        model = uniform_k(ds, model_name, cfg, seed, log)["model"]
    else:
        model = train_uniform(ds, model_name, cfg, d, seed, log)
    n = ds.num_features * d
    stored = dense_bytes(ds.num_features, d, value_dtype)
    return make_cell(
        "uniform", ds, model, cfg, budget, seed, t0, n, stored, value_dtype, dim=d
    )  # fmt: skip


METHODS = (Method("uniform", run_uniform, value_dtypes=VALUE_DTYPES),)
