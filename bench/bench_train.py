"""Bench: the DNIS training path — fused Triton lookup × α and its backward variants.

Side by side in one process, on one batch of Zipf ids over frequency-sorted rows:

providers
* launcher   the bare Triton launchers of ``mixemb.kernels.soft_select`` and
             ``.soft_select_weights`` (CUDA only)
* launcher+map, op+map   the same with the blocks read from a per-id block map (what
             ``mixemb.searchable`` twins use) instead of the boundaries; the map puts
             every id in its boundaries' block, so only the block lookup differs
* op         ``soft_select_lookup(backend="triton")`` in eager mode: one autograd.Function
             straight onto the launchers (on CPU the reference math); the registered
             torch.library ops are what torch.compile / torch.export see, and their
             host cost per call is bench/bench_host_overhead.py's
* reference  ``soft_select_lookup(backend="reference")``: hand-written backward, eager
* eager      the unfused reference expression + autograd + ``normalize_alpha_grad``
* compile    ``torch.compile`` of the eager provider
* padded, padded-compile, padded-triton   the padded baselines of fwd and bag_fwd
             (``padded.py``): a plain lookup of the same table without α (``F.embedding``
             / ``F.embedding_bag``, their compiled gather / gather + sum, and on CUDA the
             Triton gather, fwd only); padded-alpha-compile, fwd only: the compiled
             gather × α[block], the same math as fwd; the sweep keeps padded and
             padded-triton (no compile per config)
* torch      the copy that sets the memory-speed limit

ops (every step is forward + backward, as one training step runs them)
* fwd                    out = E[ids] ⊙ α[block(ids)]
* alpha_step             table frozen: dα (normalized per block row, L1 inside)
* weights_step           α frozen: dense dE, deterministic (sort + run reduction)
* weights_step_atomic    the same with atomic adds (deterministic=False): its cost
* weights_step_sgd       α frozen, the table updated in the backward (fused SGD)
* weights_step_adagrad   same, row-wise Adagrad
* both_step              dE and dα (the warm start)
* bag_fwd, bag_alpha_step, bag_weights_step   the same on bags (one bag of F lookups per
                         sample, mode sum): ``soft_select_bag`` fuses lookup × α and the
                         pooling; provider lookup+pool is the unfused path (the lookup op,
                         then ``mixemb.nn.searchable.pool``), eager/compile its reference

Ideal bytes come from ``mixemb.reference`` (one read of inputs, one write of outputs per
pass), twice: every lookup reading its row (``bytes``) and each distinct row of the batch
read once (``bytes_dram``). An op that returns a dense (N, K) weight gradient
(``DENSE_GRAD_OPS``) also counts its zero fill, N·K·itemsize written; the sort of the
deterministic weights step is extra traffic the ideal does not count. Times are device ms
and host µs per call (``timing.py``), with the L2 hot, cold or both (``--l2``); each row's
``vs_best_padded`` divides its time by the fastest padded provider of its op.

    python bench/bench_train.py                      # cuda: full shape; cpu: small
    python bench/bench_train.py --device cuda --sweep
    python bench/bench_train.py --device cpu --no-compile
"""

from __future__ import annotations

import argparse
import itertools
import sys
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import padded  # noqa: E402
from bench_reference import TABLE_COLUMNS, zipf_ids  # noqa: E402
from common import (  # noqa: E402
    DEFAULT_ITERS,
    compare_to_best_padded,
    measure,
    report,
    start_run,
)
from timing import add_l2_argument, l2_modes  # noqa: E402

from mixemb.nn import FusedOptimizer  # noqa: E402
from mixemb.nn.searchable import pool  # noqa: E402
from mixemb.ops import soft_select_lookup  # noqa: E402
from mixemb.ops.soft_select_pooled import soft_select_bag  # noqa: E402
from mixemb.reference import (  # noqa: E402
    block_of,
    equal_boundaries,
    normalize_alpha_grad,
    padded_bag_bytes,
    padded_gather_bytes,
    soft_select_alpha_grad_bytes,
    soft_select_bag_bytes,
    soft_select_bag_reference,
    soft_select_fused_update_bytes,
    soft_select_lookup_bytes,
    soft_select_lookup_reference,
    soft_select_weight_grad_bytes,
)

BENCH = "bench_train"
SHAPES = {
    "full": dict(rows=4_000_000, dim=64, blocks=10, batch=16384, fields=26, zipf=1.05),
    "small": dict(rows=200_000, dim=64, blocks=10, batch=2048, fields=26, zipf=1.05),
}
# The sweep of the issue: K × lookups × id distribution (0 = uniform) × hot-row placement.
SWEEP = dict(
    dim=[8, 16, 32, 64, 128, 256],
    lookups=[4096, 65536, 524288],
    zipf=[0.0, 1.05, 1.15],
    permuted=[False, True],
)
SWEEP_TABLE_BYTES = 1 << 30  # rows = min(4M, 1 GiB / row bytes)
L1 = 1e-5
LR = 1e-3
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / f"{BENCH}.json"
OPS = [
    "fwd",
    "alpha_step",
    "weights_step",
    "weights_step_atomic",
    "weights_step_sgd",
    "weights_step_adagrad",
    "both_step",
    "bag_fwd",
    "bag_alpha_step",
    "bag_weights_step",
]
# The ops whose weight gradient is a dense (N, K) tensor, zero-filled every step: the
# fill is N·K·itemsize written, counted in their ideal bytes.
DENSE_GRAD_OPS = ("weights_step", "weights_step_atomic", "both_step", "bag_weights_step")
PADDED_OPS = ("fwd", "bag_fwd")


def make_inputs(cfg: dict, device: torch.device) -> dict:
    """Table, α, boundaries, ids (B, F) and dout for one config; sets cfg["unique_ids"]."""
    n, k, num_blocks = cfg["rows"], cfg["dim"], cfg["blocks"]
    gen = torch.Generator(device=device).manual_seed(1)
    weight = torch.randn(n, k, generator=gen, device=device)
    alpha = torch.rand(num_blocks, k, generator=gen, device=device)
    shape = (cfg["batch"], cfg["fields"])
    if cfg["zipf"] > 0:
        ids = zipf_ids(n, shape, cfg["zipf"], device)
    else:
        ids = torch.randint(0, n, shape, generator=gen, device=device)
    if cfg.get("permuted"):  # hot rows scattered over the table instead of at id 0..
        perm = torch.randperm(n, generator=gen, device=device)
        ids = perm[ids]
    ids = ids.to(getattr(torch, cfg.get("ids_dtype", "int64")))
    cfg["unique_ids"] = int(torch.unique(ids).numel())
    dout = torch.randn(*shape, k, generator=gen, device=device)
    boundaries = equal_boundaries(n, num_blocks).to(device)
    block_map = block_of(torch.arange(n, device=device), boundaries)
    num_bags, fields = shape
    offsets = torch.arange(num_bags + 1, device=device) * fields  # one bag per sample
    dout_bag = torch.randn(num_bags, k, generator=gen, device=device)
    return dict(
        weight=weight, alpha=alpha, boundaries=boundaries, block_map=block_map, ids=ids,
        dout=dout, offsets=offsets, dout_bag=dout_bag,
    )  # fmt: skip


def ideal_bytes(cfg: dict, op: str, block_map: bool = False, unique_rows: int | None = None) -> int:
    """Ideal bytes of ``op`` at ``cfg``: every lookup reading its row (unique_rows None)
    or U distinct rows read once (the DRAM-only figure); a dense weight gradient's zero
    fill included (DENSE_GRAD_OPS)."""
    args = (cfg["batch"] * cfg["fields"], cfg["dim"], cfg["blocks"])
    kw = dict(
        ids_dtype=getattr(torch, cfg.get("ids_dtype", "int64")),
        block_map=block_map,
        unique_rows=unique_rows,
    )
    fill = cfg["rows"] * cfg["dim"] * torch.float32.itemsize if op in DENSE_GRAD_OPS else 0
    return fill + _step_bytes(op, args, kw, cfg["batch"])


def _step_bytes(op: str, args: tuple, kw: dict, num_bags: int) -> int:
    if op.startswith("bag_"):
        bag = (args[0], num_bags, *args[1:])
        fwd = soft_select_bag_bytes(*bag, **kw)
        step = {"bag_alpha_step": "alpha", "bag_weights_step": "weights"}.get(op)
        return fwd + (soft_select_bag_bytes(*bag, **kw, step=step) if step else 0)
    fwd = soft_select_lookup_bytes(*args, **kw)
    if op == "fwd":
        return fwd
    if op == "alpha_step":
        return fwd + soft_select_alpha_grad_bytes(*args, **kw)
    if op in ("weights_step", "weights_step_atomic"):
        return fwd + soft_select_weight_grad_bytes(*args, **kw)
    if op == "weights_step_sgd":
        return fwd + soft_select_fused_update_bytes(*args, **kw, optimizer="sgd")
    if op == "weights_step_adagrad":
        return fwd + soft_select_fused_update_bytes(*args, **kw, optimizer="rowwise_adagrad")
    if op == "both_step":
        return (
            fwd
            + soft_select_alpha_grad_bytes(*args, **kw)
            + soft_select_weight_grad_bytes(*args, **kw)
        )
    raise ValueError(op)


def provider_bytes(cfg: dict, provider: str, op: str, unique_rows: int | None = None) -> int:
    """Ideal bytes of what ``provider`` computes for ``op``: a plain lookup's (gather or
    bag, no α) for the padded baselines that skip α, ``ideal_bytes`` otherwise."""
    if provider in ("padded", "padded-compile", "padded-triton"):
        m, k = cfg["batch"] * cfg["fields"], cfg["dim"]
        ids_dtype = getattr(torch, cfg.get("ids_dtype", "int64"))
        if op == "fwd":
            return padded_gather_bytes(m, k, ids_dtype=ids_dtype, unique_rows=unique_rows)
        if op == "bag_fwd":
            return padded_bag_bytes(
                m, cfg["batch"], k, ids_dtype=ids_dtype, unique_rows=unique_rows
            )
        raise ValueError(f"no padded baseline for {op}")
    return ideal_bytes(cfg, op, provider.endswith("+map"), unique_rows)


def _blocks(x: dict, by_map: bool) -> tuple:
    """(boundaries or None, {"block_map": map} or {}) for a provider."""
    return (None, dict(block_map=x["block_map"])) if by_map else (x["boundaries"], {})


def lookup_cases(x: dict, backend: str, by_map: bool = False) -> dict:
    """op → callable for soft_select_lookup with ``backend`` ("triton" or "reference")."""
    w_frozen, a_frozen = x["weight"], x["alpha"]
    w_train = x["weight"].clone().requires_grad_()
    a_train = x["alpha"].clone().requires_grad_()
    ids, dout = x["ids"], x["dout"]
    b, bm = _blocks(x, by_map)
    kw = dict(l1=L1, backend=backend, check_ids=False, **bm)

    def step(w, a, **extra):
        def run():
            w.grad = a.grad = None
            soft_select_lookup(w, a, b, ids, **kw, **extra).backward(dout)

        return run

    def fwd():
        with torch.no_grad():
            return soft_select_lookup(w_frozen, a_frozen, b, ids, **kw)

    cases = {
        "fwd": fwd,
        "alpha_step": step(w_frozen, a_train),
        "weights_step": step(w_train, a_frozen),
        "both_step": step(w_train, a_train),
    }
    if backend == "triton":
        cases["weights_step_atomic"] = step(w_train, a_frozen, deterministic=False)
        for name, kind in (("sgd", "sgd"), ("adagrad", "rowwise_adagrad")):
            opt = FusedOptimizer(w_train, kind, lr=LR)
            cases[f"weights_step_{name}"] = step(w_train, a_frozen, fused_optimizer=opt)
    return cases


def launcher_cases(x: dict, by_map: bool = False) -> dict:
    """op → callable on the bare launchers (no dispatcher, no autograd)."""
    from mixemb.kernels import soft_select as K
    from mixemb.kernels import soft_select_weights as KW

    w, a, dout = x["weight"], x["alpha"], x["dout"]
    b, bm = _blocks(x, by_map)
    flat = x["ids"].reshape(-1)
    d = dout.reshape(-1, w.shape[1])
    w_upd = w.clone()
    lr = torch.tensor([LR], device=w.device)
    state = torch.zeros(w.shape[0], device=w.device)

    def fwd():
        return K.soft_select_fwd(w, a, b, flat, **bm)

    def alpha_step():
        K.soft_select_fwd(w, a, b, flat, **bm)
        return K.soft_select_bwd_alpha(d, w, a, b, flat, l1=L1, **bm)

    def weights(**kw):
        def run():
            K.soft_select_fwd(w_upd, a, b, flat, **bm)
            return KW.soft_select_bwd_weight(d, w_upd, a, b, flat, **kw, **bm)

        return run

    def both_step():
        K.soft_select_fwd(w, a, b, flat, **bm)
        K.soft_select_bwd_alpha(d, w, a, b, flat, l1=L1, **bm)
        return KW.soft_select_bwd_weight(d, w, a, b, flat, **bm)

    return {
        "fwd": fwd,
        "alpha_step": alpha_step,
        "weights_step": weights(),
        "weights_step_atomic": weights(deterministic=False),
        "weights_step_sgd": weights(optimizer="sgd", lr=lr),
        "weights_step_adagrad": weights(optimizer="rowwise_adagrad", lr=lr, state=state),
        "both_step": both_step,
    }


def eager_cases(x: dict, compile_: bool) -> dict:
    """op → callable for the unfused reference with autograd (optionally compiled)."""
    lookup = soft_select_lookup_reference
    normalize = normalize_alpha_grad
    if compile_:
        lookup = torch.compile(soft_select_lookup_reference, dynamic=False)
        normalize = torch.compile(normalize_alpha_grad, dynamic=False)
    w_frozen, a_frozen = x["weight"], x["alpha"]
    w_train = x["weight"].clone().requires_grad_()
    a_train = x["alpha"].clone().requires_grad_()
    b, ids, dout = x["boundaries"], x["ids"], x["dout"]

    def step(w, a):
        def run():
            w.grad = a.grad = None
            lookup(w, a, b, ids).backward(dout)
            if a.grad is not None:
                return normalize(a.grad, a.detach(), L1)

        return run

    def fwd():
        with torch.no_grad():
            return lookup(w_frozen, a_frozen, b, ids)

    return {
        "fwd": fwd,
        "alpha_step": step(w_frozen, a_train),
        "weights_step": step(w_train, a_frozen),
        "both_step": step(w_train, a_train),
    }


def bag_cases(x: dict, provider: str, by_map: bool = False) -> dict:
    """bag op → callable: provider "triton" / "reference" (soft_select_bag's backends),
    "lookup+pool" (soft_select_lookup(backend="triton"), then pool), "eager" / "compile"
    (soft_select_bag_reference + autograd + normalize_alpha_grad)."""
    w_train = x["weight"].clone().requires_grad_()
    a_train = x["alpha"].clone().requires_grad_()
    ids, offsets, dout = x["ids"].reshape(-1), x["offsets"], x["dout_bag"]
    b, bm = _blocks(x, by_map)
    num_bags, fields = x["ids"].shape
    bags = torch.arange(ids.numel(), device=ids.device) // fields
    normalize = normalize_alpha_grad
    if provider in ("triton", "reference"):
        kw = dict(l1=L1, backend=provider, check_ids=False, **bm)

        def bag(w, a):
            return soft_select_bag(w, a, b, ids, offsets, **kw)
    elif provider == "lookup+pool":
        kw = dict(l1=L1, backend="triton", check_ids=False, **bm)

        def bag(w, a):
            return pool(soft_select_lookup(w, a, b, ids, **kw), bags, num_bags, "sum")
    else:
        bag = partial(soft_select_bag_reference, boundaries=b, ids=ids, offsets=offsets, **bm)
        if provider == "compile":
            bag = torch.compile(bag, dynamic=False)
            normalize = torch.compile(normalize_alpha_grad, dynamic=False)

    def step(w, a):
        def run():
            w.grad = a.grad = None
            bag(w, a).backward(dout)
            if a.grad is not None and provider in ("eager", "compile"):
                return normalize(a.grad, a.detach(), L1)

        return run

    def fwd():
        with torch.no_grad():
            return bag(x["weight"], x["alpha"])

    return {
        "bag_fwd": fwd,
        "bag_alpha_step": step(x["weight"], a_train),
        "bag_weights_step": step(w_train, x["alpha"]),
    }


def bag_launcher_cases(x: dict) -> dict:
    """bag op → callable on the bare bag launchers (no dispatcher, no autograd)."""
    from mixemb.kernels import soft_select_bag as KB

    w, a, b, offsets, dout = x["weight"], x["alpha"], x["boundaries"], x["offsets"], x["dout_bag"]
    ids = x["ids"].reshape(-1)

    def fwd():
        return KB.soft_select_bag_fwd(w, a, b, ids, offsets)

    def alpha_step():
        KB.soft_select_bag_fwd(w, a, b, ids, offsets)
        return KB.soft_select_bag_bwd_alpha(dout, w, a, b, ids, offsets, l1=L1)

    def weights_step():
        KB.soft_select_bag_fwd(w, a, b, ids, offsets)
        return KB.soft_select_bag_bwd_weight(dout, w, a, b, ids, offsets)

    return {"bag_fwd": fwd, "bag_alpha_step": alpha_step, "bag_weights_step": weights_step}


def padded_cases(x: dict, device: torch.device, compile_: bool) -> list[tuple[str, dict]]:
    """(provider, {op: callable}) of the padded baselines of fwd and bag_fwd (module
    docstring); ``compile_`` adds the torch.compile ones."""
    w, a, b, ids = x["weight"], x["alpha"], x["boundaries"], x["ids"]
    flat = ids.reshape(-1)
    offsets = x["offsets"][:-1].to(flat.dtype)  # a bag per sample, of the ids' dtype
    out = [
        (
            "padded",
            {
                "fwd": lambda: F.embedding(ids, w),
                "bag_fwd": lambda: F.embedding_bag(flat, w, offsets, mode="sum"),
            },
        )
    ]
    if compile_:
        gather = torch.compile(padded.gather, dynamic=False)
        bag = torch.compile(padded.bag_sum, dynamic=False)
        lookup = torch.compile(soft_select_lookup_reference, dynamic=False)
        out.append(
            ("padded-compile", {"fwd": lambda: gather(w, ids), "bag_fwd": lambda: bag(w, ids)})
        )
        out.append(("padded-alpha-compile", {"fwd": lambda: lookup(w, a, b, ids)}))
    if device.type == "cuda":
        out.append(("padded-triton", {"fwd": lambda: padded.triton_gather(w, ids)}))
    return out


def providers(x: dict, device: torch.device, args) -> list[tuple[str, dict]]:
    out = []
    if device.type == "cuda":
        out.append(("launcher", launcher_cases(x) | bag_launcher_cases(x)))
        out.append(("launcher+map", launcher_cases(x, by_map=True)))
    out.append(("op", lookup_cases(x, "triton") | bag_cases(x, "triton")))
    out.append(("op+map", lookup_cases(x, "triton", by_map=True) | bag_cases(x, "triton", True)))
    out.append(("lookup+pool", bag_cases(x, "lookup+pool")))
    if not args.sweep_only_fused:
        out.append(("reference", lookup_cases(x, "reference") | bag_cases(x, "reference")))
        out.append(("eager", eager_cases(x, compile_=False) | bag_cases(x, "eager")))
        if not args.no_compile:
            out.append(("compile", eager_cases(x, compile_=True) | bag_cases(x, "compile")))
    compile_ = not (args.no_compile or args.sweep_only_fused)
    out += padded_cases(x, device, compile_)
    return out


def sweep_configs(base: dict) -> list[dict]:
    cfgs = []
    for dim, lookups, zipf, permuted in itertools.product(*SWEEP.values()):
        if permuted and zipf == 0:
            continue  # uniform ids have no hot rows to move
        rows = min(base["rows"], SWEEP_TABLE_BYTES // (4 * dim))
        cfgs.append(
            dict(base, name=f"sweep-K{dim}-M{lookups}-s{zipf}{'-perm' if permuted else ''}",
                 rows=rows, dim=dim, batch=lookups // base["fields"] or 1, zipf=zipf,
                 permuted=permuted)
        )  # fmt: skip
    return cfgs


def run_config(cfg, device, args, warmup, repeats, copy_bytes, ops) -> list[dict]:
    x = make_inputs(cfg, device)
    out, meta, copy_rate = start_run(
        args.out, device, bench=BENCH, shape=cfg, copy_bytes=copy_bytes
    )
    for provider, cases in providers(x, device, args):
        for op in ops:
            if op not in cases:
                continue
            for l2 in l2_modes(args.l2, device):
                measure(
                    out, meta, bench=BENCH, shape=cfg, provider=provider, op=op, fn=cases[op],
                    nbytes=provider_bytes(cfg, provider, op),
                    nbytes_dram=provider_bytes(cfg, provider, op, cfg["unique_ids"]),
                    l2=l2, copy_gbps=copy_rate, device=device, warmup=warmup, repeats=repeats,
                )  # fmt: skip
    del x
    if device.type == "cuda":
        torch.cuda.empty_cache()
    notes = compare_to_best_padded(out.rows, is_padded=padded.is_padded, group=_group)
    out.save()
    print(report(BENCH, meta, cfg, out.rows, TABLE_COLUMNS, args.out, notes))
    return out.rows


def _group(row: dict) -> tuple | None:
    """The rows a row's time is compared with: its op and L2 mode (not the copy)."""
    return None if row["op"] == "copy" else (row["op"], f"L2 {row['l2']}")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--shape", choices=sorted(SHAPES), help="default: full on cuda, else small")
    p.add_argument("--rows", type=int)
    p.add_argument("--dim", type=int)
    p.add_argument("--blocks", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--fields", type=int)
    p.add_argument("--zipf", type=float, help="0 = uniform ids")
    p.add_argument("--ids-dtype", choices=["int64", "int32"], default="int64")
    p.add_argument("--ops", default=",".join(OPS), help=f"comma-separated subset of {OPS}")
    p.add_argument(
        "--no-compile",
        action="store_true",
        help="skip torch.compile(reference) and the padded-compile baselines",
    )
    add_l2_argument(p)
    p.add_argument("--sweep", action="store_true", help="also run the K × lookups × ids sweep")
    p.add_argument(
        "--sweep-only-fused", action="store_true",
        help="providers launcher + op only (what the sweep uses)",
    )  # fmt: skip
    p.add_argument("--warmup", type=int)
    p.add_argument("--repeats", type=int)
    p.add_argument("--copy-mib", type=int)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but torch.cuda.is_available() is False")
    ops = [o for o in args.ops.split(",") if o]
    unknown = sorted(set(ops) - set(OPS))
    if unknown:
        raise SystemExit(f"unknown ops {unknown}; choose from {OPS}")
    shape = args.shape or ("full" if device.type == "cuda" else "small")
    cfg = {"name": shape, **SHAPES[shape], "ids_dtype": args.ids_dtype}
    for key in ("rows", "dim", "blocks", "batch", "fields", "zipf"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    warmup, repeats = DEFAULT_ITERS[device.type]
    warmup = warmup if args.warmup is None else args.warmup
    repeats = repeats if args.repeats is None else args.repeats
    copy_bytes = None if args.copy_mib is None else args.copy_mib << 20
    rows = run_config(cfg, device, args, warmup, repeats, copy_bytes, ops)
    if args.sweep:
        args.sweep_only_fused = True
        for sweep_cfg in sweep_configs(cfg):
            rows += run_config(sweep_cfg, device, args, warmup, repeats, copy_bytes, ops)
    return rows


if __name__ == "__main__":
    sys.exit(1 if any(r["error"] for r in main()) else 0)
