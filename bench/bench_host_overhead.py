"""Bench: host time per call of the DNIS lookup × α, on shapes so small that compute is noise.

What it isolates is the Python / dispatcher / autograd cost around the math, the part a GPU
cannot hide when the kernels take tens of microseconds:

providers
* floor       the math the op runs, called directly: ``mixemb.reference``'s functions on
              CPU, the Triton launchers on CUDA (no autograd, no dispatcher)
* lookup      ``soft_select_lookup(backend="triton")``: the public op's eager path
* reference   ``soft_select_lookup(backend="reference")``
* custom_op   ``torch.ops.mixemb.soft_select`` called directly: the registered op with its
              registered autograd, the path torch.compile and torch.export see

ops (forward + backward where a step says so, as a training step runs them)
* fwd               forward under no_grad
* alpha_step        table frozen: dα
* weights_step      α frozen: dense dE
* weights_step_sgd  α frozen, the table updated in the backward (fused SGD; lookup only)

and the serving ops, called as a serving loop calls them (grad mode on, no input that
requires grad), on a pruned copy of the same table:
* ragged      ``mixemb.ops.ragged_gather`` / ``ragged_bag`` (bags of 4) / ``ragged_dot``;
              ``serve_bag_weighted`` passes per_sample_weights that require grad (the
              forward records the C++ autograd node)
* padded      ``F.embedding`` / ``F.embedding_bag`` / gather, multiply and sum on the
              dense table

Rows (host_us = median µs per call over ``--repeats`` timed batches of ``--calls`` calls;
on CPU in thread CPU time, so cores shared with other work disturb it less) are appended
to bench/results/bench_host_overhead.json like the other benches'.

    python bench/bench_host_overhead.py                 # cpu, 1 thread
    python bench/bench_host_overhead.py --device cuda   # kernels run too: a GPU sync per batch
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RowsFile, markdown_table, run_metadata, synchronize  # noqa: E402

from mixemb import reference as ref  # noqa: E402
from mixemb.nn import FusedOptimizer  # noqa: E402
from mixemb.ops import soft_select_lookup  # noqa: E402

BENCH = "bench_host_overhead"
SHAPE = dict(rows=64, dim=8, blocks=4, lookups=32)
L1 = 1e-5
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / f"{BENCH}.json"
COLUMNS = [("provider", "provider"), ("op", "op"), ("host_us", "host µs / call")]


def make_inputs(device: torch.device) -> dict:
    gen = torch.Generator().manual_seed(0)
    n, k = SHAPE["rows"], SHAPE["dim"]
    x = dict(
        weight=torch.randn(n, k, generator=gen),
        alpha=torch.rand(SHAPE["blocks"], k, generator=gen),
        boundaries=ref.equal_boundaries(n, SHAPE["blocks"]),
        ids=torch.randint(0, n, (SHAPE["lookups"],), generator=gen),
        dout=torch.randn(SHAPE["lookups"], k, generator=gen),
    )
    return {name: t.to(device) for name, t in x.items()}


def floor_cases(x: dict) -> dict:
    """op → callable running only the math: reference functions (CPU) or launchers (CUDA)."""
    w, a, b, ids, dout = x["weight"], x["alpha"], x["boundaries"], x["ids"], x["dout"]
    w_upd = w.clone()
    lr = torch.tensor([1e-3], device=w.device)
    state = torch.zeros(0, device=w.device)
    if w.is_cuda:
        from mixemb.kernels import soft_select as K
        from mixemb.kernels import soft_select_weights as KW

        return {
            "fwd": lambda: K.soft_select_fwd(w, a, b, ids),
            "alpha_step": lambda: (
                K.soft_select_fwd(w, a, b, ids),
                K.soft_select_bwd_alpha(dout, w, a, b, ids, l1=L1),
            ),
            "weights_step": lambda: (
                K.soft_select_fwd(w, a, b, ids),
                KW.soft_select_bwd_weight(dout, w, a, b, ids),
            ),
            "weights_step_sgd": lambda: (
                K.soft_select_fwd(w_upd, a, b, ids),
                KW.soft_select_bwd_weight(dout, w_upd, a, b, ids, optimizer="sgd", lr=lr),
            ),
        }
    return {
        "fwd": lambda: ref.reference_forward(w, a, b, ids, None),
        "alpha_step": lambda: (
            ref.reference_forward(w, a, b, ids, None),
            ref.reference_alpha_values_grad(dout, w, a, b, ids, None, True, False, True, L1, 1e-8),
        ),
        "weights_step": lambda: (
            ref.reference_forward(w, a, b, ids, None),
            ref.reference_weight_grad(dout, w, a, b, ids, None),
        ),
        "weights_step_sgd": lambda: (
            ref.reference_forward(w_upd, a, b, ids, None),
            ref.fused_update_reference(dout, w_upd, a, b, ids, None, state, lr, "sgd"),
        ),
    }


def step_cases(x: dict, lookup) -> dict:
    """op → callable: forward (+ backward) through ``lookup(w, a, b, ids, **kw)``."""
    w_train = x["weight"].clone().requires_grad_()
    a_train = x["alpha"].clone().requires_grad_()
    w, a, b, ids, dout = x["weight"], x["alpha"], x["boundaries"], x["ids"], x["dout"]

    def step(wt, at, **kw):
        def run():
            wt.grad = at.grad = None
            lookup(wt, at, b, ids, **kw).backward(dout)

        return run

    def fwd():
        with torch.no_grad():
            return lookup(w, a, b, ids)

    return {
        "fwd": fwd,
        "alpha_step": step(w, a_train),
        "weights_step": step(w_train, a),
        "fused": lambda opt: step(w_train, a, fused_optimizer=opt),
    }


def serving_cases(x: dict) -> dict:
    """provider → op → callable: the ragged serving ops and their padded counterparts."""
    import torch.nn.functional as F

    from mixemb import _ext
    from mixemb.ops import ragged_bag, ragged_dot, ragged_gather
    from mixemb.ragged import RaggedTable

    w, ids = x["weight"], x["ids"]
    pruned = w * (torch.rand(w.shape, generator=torch.Generator().manual_seed(1)) < 0.5).to(w)
    offsets = torch.arange(0, ids.numel(), 4, device=w.device)
    weights = torch.rand(ids.numel(), device=w.device, requires_grad=True)
    padded = {
        "serve_gather": lambda: F.embedding(ids, w),
        "serve_bag": lambda: F.embedding_bag(ids, w, offsets, mode="sum"),
        "serve_bag_weighted": lambda: F.embedding_bag(
            ids, w, offsets, mode="sum", per_sample_weights=weights
        ),
        "serve_dot": lambda: (w[ids] * w[ids]).sum(1),
    }
    if not _ext.HAS_EXT:
        return {"padded": padded}
    table = RaggedTable.from_dense(pruned)
    ragged = {
        "serve_gather": lambda: ragged_gather(table, ids),
        "serve_bag": lambda: ragged_bag(table, ids, offsets),
        "serve_bag_weighted": lambda: ragged_bag(table, ids, offsets, per_sample_weights=weights),
        "serve_dot": lambda: ragged_dot(table, ids, table, ids),
    }
    return {"ragged": ragged, "padded": padded}


def providers(x: dict) -> dict:
    def public(backend):
        def lookup(w, a, b, ids, **kw):
            return soft_select_lookup(w, a, b, ids, l1=L1, backend=backend, check_ids=False, **kw)

        return lookup

    def custom_op(w, a, b, ids):
        return torch.ops.mixemb.soft_select(w, a, b, ids, None, True, L1, 1e-8, False, True)

    out = {"floor": floor_cases(x)}
    for name, lookup in (("lookup", public("triton")), ("reference", public("reference"))):
        cases = step_cases(x, lookup)
        fused = cases.pop("fused")
        if name == "lookup":
            opt = FusedOptimizer(x["weight"], "sgd", lr=1e-3)
            cases["weights_step_sgd"] = fused(opt)
        out[name] = cases
    cases = step_cases(x, custom_op)
    cases.pop("fused")
    out["custom_op"] = cases
    return {**out, **serving_cases(x)}


def host_us(fn, device: torch.device, calls: int, warmup: int, repeats: int) -> float:
    """Median over ``repeats`` batches of the mean µs per call of ``calls`` calls.

    On CPU the clock is this thread's CPU time, not wall time: other processes sharing
    the cores then slow the measurement down less (they still evict its caches). On
    CUDA it is wall time up to a sync after each batch.
    """
    clock = time.thread_time if device.type == "cpu" else time.perf_counter
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        t0 = clock()
        for _ in range(calls):
            fn()
        synchronize(device)
        times.append((clock() - t0) / calls * 1e6)
    return statistics.median(times)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--calls", type=int, default=300, help="calls per timed batch")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    meta = run_metadata(device)
    x = make_inputs(device)
    out = RowsFile(args.out)
    for provider, cases in providers(x).items():
        for op, fn in cases.items():
            us = host_us(fn, device, args.calls, args.warmup, args.repeats)
            out.add({**meta, "bench": BENCH, "shape": SHAPE, "provider": provider, "op": op,
                     "host_us": us, "calls": args.calls, "repeats": args.repeats})  # fmt: skip
    table = markdown_table(out.rows, COLUMNS)
    print(f"## {BENCH} on {meta['device']}\n\ntorch {meta['torch']}, commit {meta['commit']}\n")
    print(table)
    return out.rows


if __name__ == "__main__":
    main()
