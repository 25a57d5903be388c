"""Serving a pruned table: mixemb's ragged ops vs the padded table vs the torch-ops reference.

Side by side in one process, on one realistically pruned table (K = 64, rows keep a
non-prefix set of dims, frequent rows more: per-row dims d = clamp(A·(1+row)^-0.35)
with A set for a target mean kept dim, 4 by default), Zipf lookups over
frequency-sorted ids:

* gather — ``mixemb.ops.ragged_gather`` (the extension) vs the padded baselines on the
  unpruned (N, K) table (``padded``: ``F.embedding``; ``padded-compile``: its
  ``torch.compile``; ``padded-triton``, CUDA only: a hand-written Triton gather, see
  ``padded.py``) vs ``ragged_gather_reference`` (torch ops); on CUDA each mixemb op is also
  timed on its other kernel variants (op arguments, ``VARIANTS``): ``mixemb-warp``, the
  one-warp-per-lookup kernels (``one_warp=True``), ``mixemb-u1`` … ``mixemb-u8``, the 16-lane
  kernels serving 1, 2, 4 or 8 lookups at once (``lookups_at_once``), and bags as
  ``mixemb-lanes`` and ``mixemb-lanes-u1`` … ``mixemb-lanes-u8``, the bag kernel whose lanes
  locate 32 lookups at once (``bag_kernel="lanes"``);
* gather_out — the gathers into an output buffer allocated once (``ragged_gather(...,
  out=)`` vs ``torch.index_select(..., out=)`` and, on CUDA, the Triton gather's ``out=``):
  the kernels alone, without the allocation and first-touch page faults of a fresh output;
* bag — ``ragged_bag`` (sum, one bag per sample of F lookups) vs ``F.embedding_bag`` and the
  compiled gather + sum on the unpruned table;
* dot — ``ragged_dot`` of two lookups vs gather + multiply + sum on the unpruned table,
  eager and compiled.

Each mixemb op also runs on the same pruned table stored with fp16 values
(``mixemb-fp16``) and as an int8 table (``mixemb-int8``: uint8 codes plus a per-row fp16
scale and bias, dequantized by the kernels into float32 rows).

Reports device ms and host µs per call (``timing.py``; with the L2 hot, cold or both,
``--l2``), ideal bytes (``mixemb.reference``) with every lookup reading its row and,
DRAM-only, each distinct row's metadata and kept values read once, GB/s, % of the copy
bandwidth measured in the same run, each time over the fastest padded provider of its op
(``vs_best_padded``), and the bytes of each table, in all and per row. ``--sweep`` adds
mean kept dims 2 and 6 and other lookup counts.

    python bench/bench_serve.py --device cpu            # small shape on this CPU
    python bench/bench_serve.py --device cpu --rounds 5 # each case's fastest of 5 rounds
    python bench/bench_serve.py --device cuda           # DEVELOPERS.md shape
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

import padded  # noqa: E402
from bench_reference import zipf_ids  # noqa: E402
from common import (  # noqa: E402
    compare_to_best_padded,
    measure,
    report,
    start_run,
)
from timing import add_l2_argument, l2_modes  # noqa: E402

from mixemb.ops import ragged_bag, ragged_dot, ragged_gather  # noqa: E402
from mixemb.ragged import RaggedTable  # noqa: E402
from mixemb.reference import (  # noqa: E402
    padded_bag_bytes,
    padded_dot_bytes,
    padded_gather_bytes,
    ragged_bag_bytes,
    ragged_dot_bytes,
    ragged_gather_bytes,
    ragged_gather_reference,
)

BENCH = "bench_serve"
SHAPES = {
    "full": {"rows": 4_000_000, "dim": 64, "batch": 16384, "fields": 26, "zipf": 1.05},
    "small": {"rows": 200_000, "dim": 64, "batch": 2048, "fields": 26, "zipf": 1.05},
}
ITERS = {"cpu": (2, 7), "cuda": (10, 50)}
# The CUDA kernel variants timed beside each op's default ("mixemb"): provider → the op's
# keyword arguments, and whether only ragged_bag has it.
VARIANTS = {
    "mixemb-warp": ({"one_warp": True}, False),
    **{f"mixemb-u{u}": ({"lookups_at_once": u}, False) for u in (1, 2, 4, 8)},
    "mixemb-lanes": ({"bag_kernel": "lanes"}, True),
    **{
        f"mixemb-lanes-u{u}": ({"bag_kernel": "lanes", "lookups_at_once": u}, True)
        for u in (1, 2, 4, 8)
    },
}
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / f"{BENCH}.json"
COLUMNS = [
    ("mean_dim", "mean dim"),
    ("lookups", "lookups"),
    ("provider", "provider"),
    ("op", "op"),
    ("l2", "L2"),
    ("ms", "ms"),
    ("host_us", "host µs"),
    ("mb", "ideal MB"),
    ("gbps", "GB/s"),
    ("pct_of_copy", "% of copy"),
    ("mb_dram", "DRAM MB"),
    ("pct_of_copy_dram", "% of copy (DRAM)"),
    ("vs_best_padded", "vs best padded"),
    ("timing", "timing"),
    ("table_mb", "table MB"),
    ("bytes_per_row", "B/row"),
]
# The value formats each mixemb op also runs on (provider suffix → RaggedTable.from_dense's
# dtype); the default "mixemb" rows are fp32.
VALUE_FORMATS = {"fp16": torch.float16, "int8": "int8"}


def pruned_table(rows: int, dim: int, mean_dim: float, device, seed: int = 0) -> torch.Tensor:
    """(rows, dim) float32 with ~mean_dim kept entries per row, more for low (hot) ids,
    at random (non-prefix) positions; zeros elsewhere."""
    gen = torch.Generator(device=device).manual_seed(seed)
    decay = (1 + torch.arange(rows, device=device, dtype=torch.float64)).pow(-0.35)
    lo, hi = 0.0, 1e6
    for _ in range(60):  # the scale A that gives the target mean dim
        mid = (lo + hi) / 2
        mean = (mid * decay).round().clamp(1, dim).mean().item()
        lo, hi = (mid, hi) if mean < mean_dim else (lo, mid)
    dims = (lo * decay).round().clamp(1, dim).long()
    ranks = torch.rand(rows, dim, generator=gen, device=device).argsort(1).argsort(1)
    values = torch.randn(rows, dim, generator=gen, device=device)
    return values * (ranks < dims.unsqueeze(1))


def cases(
    cfg: dict, device: torch.device, variants: dict | None = None, compile_: bool = True
) -> list[tuple]:
    """(provider, op, fn, ideal bytes, DRAM-only ideal bytes, table bytes) rows of one
    config; ``variants`` (default: VARIANTS on CUDA, none on CPU, where the kernels ignore
    them) adds the mixemb ops' kernel variants; ``compile_`` the padded-compile providers."""
    n, k = cfg["rows"], cfg["dim"]
    dense = pruned_table(n, k, cfg["mean_dim"], device)
    table = RaggedTable.from_dense(dense)
    formats = {name: RaggedTable.from_dense(dense, dtype=d) for name, d in VALUE_FORMATS.items()}
    unpruned = torch.randn(n, k, device=device)  # what a padded table stores
    ids = zipf_ids(n, (cfg["batch"], cfg["fields"]), cfg["zipf"], device)
    flat = ids.reshape(-1)
    m, num_bags = flat.numel(), cfg["batch"]
    dims = table.row_dims()
    kept = int(dims[flat].sum())
    offsets = torch.arange(0, m, cfg["fields"], device=device)
    ids_b = zipf_ids(n, (m,), cfg["zipf"], device, seed=1)
    kept_pair = kept + int(dims[ids_b].sum())
    # DRAM-only: the distinct rows of the batch (of both sides of the dot), read once each
    distinct = torch.unique(flat)
    distinct_pair = torch.unique(torch.cat([flat, ids_b]))
    u, kept_u = distinct.numel(), int(dims[distinct].sum())
    u_pair, kept_u_pair = distinct_pair.numel(), int(dims[distinct_pair].sum())
    padded_bytes = unpruned.numel() * 4

    def ours(provider: str, kw: dict, bag_only: bool, tbl: RaggedTable = table) -> list:
        """The mixemb ops on ``tbl`` run with the kernel variant kw."""
        # the byte formulas' dtype: the values' (fp32, fp16) or "int8"
        dtype = "int8" if tbl.scale_bias is not None else tbl.values.dtype
        gb = (
            ragged_gather_bytes(m, k, kept, dtype),
            ragged_gather_bytes(m, k, kept_u, dtype, unique_rows=u),
        )
        bag_bytes = (
            ragged_bag_bytes(m, num_bags, k, kept, dtype),
            ragged_bag_bytes(m, num_bags, k, kept_u, dtype, unique_rows=u),
        )
        dot_bytes = (
            ragged_dot_bytes(m, k, kept_pair, dtype),
            ragged_dot_bytes(m, k, kept_u_pair, dtype, unique_rows=u_pair),
        )
        out = torch.empty(*ids.shape, k, dtype=tbl.rows_dtype, device=device)
        bag = [(provider, "bag", lambda: ragged_bag(tbl, flat, offsets, **kw), *bag_bytes)]
        if bag_only:
            return [(*row, tbl.nbytes()) for row in bag]
        rows = [
            (provider, "gather", lambda: ragged_gather(tbl, ids, **kw), *gb),
            # into a reused output buffer: the kernel without allocation and first-touch
            # page faults (most of a big fresh CPU output's cost)
            (provider, "gather_out", lambda: ragged_gather(tbl, ids, out=out, **kw), *gb),
            *bag,
            (provider, "dot", lambda: ragged_dot(tbl, flat, tbl, ids_b, **kw), *dot_bytes),
        ]
        return [(*row, tbl.nbytes()) for row in rows]

    out_padded = torch.empty(m, k, device=device)
    g = (ragged_gather_bytes(m, k, kept), ragged_gather_bytes(m, k, kept_u, unique_rows=u))
    pg = (padded_gather_bytes(m, k), padded_gather_bytes(m, k, unique_rows=u))
    pb = (
        padded_bag_bytes(m, num_bags, k),
        padded_bag_bytes(m, num_bags, k, unique_rows=u),
    )
    pd = (padded_dot_bytes(m, k), padded_dot_bytes(m, k, unique_rows=u_pair))
    baselines = [
        ("padded", "gather", lambda: F.embedding(ids, unpruned), *pg),
        (
            "padded",
            "gather_out",
            lambda: torch.index_select(unpruned, 0, flat, out=out_padded),
            *pg,
        ),
        ("padded", "bag", lambda: F.embedding_bag(flat, unpruned, offsets, mode="sum"), *pb),
        ("padded", "dot", lambda: padded.dot(unpruned, flat, ids_b), *pd),
    ]
    if compile_:
        gather_c, bag_c, dot_c = (
            torch.compile(fn, dynamic=False) for fn in (padded.gather, padded.bag_sum, padded.dot)
        )
        baselines += [
            ("padded-compile", "gather", lambda: gather_c(unpruned, ids), *pg),
            ("padded-compile", "bag", lambda: bag_c(unpruned, ids), *pb),  # a bag per sample
            ("padded-compile", "dot", lambda: dot_c(unpruned, flat, ids_b), *pd),
        ]
    if device.type == "cuda":
        baselines += [
            ("padded-triton", "gather", lambda: padded.triton_gather(unpruned, ids), *pg),
            (
                "padded-triton",
                "gather_out",
                lambda: padded.triton_gather(unpruned, flat, out=out_padded),
                *pg,
            ),
        ]
    rows = [
        *ours("mixemb", {}, False),
        *[row for name, t in formats.items() for row in ours(f"mixemb-{name}", {}, False, t)],
        *[(*row, padded_bytes) for row in baselines],
        ("reference", "gather", lambda: ragged_gather_reference(table, ids), *g, table.nbytes()),
    ]
    ops = ["gather", "gather_out", "bag", "dot"]
    rows.sort(key=lambda row: ops.index(row[1]))  # by op; providers keep their order
    if variants is None:
        variants = VARIANTS if device.type == "cuda" else {}
    for provider, (kw, bag_only) in variants.items():
        rows += ours(provider, kw, bag_only)
    return rows


def _ms(row: dict) -> float:
    """A row's time, infinite for a provider that failed."""
    return math.inf if row["ms"] is None else row["ms"]


def loop_case(name: str, cfg: dict, device: torch.device, seconds: float) -> None:
    """Call the case ``name`` ("provider:op") of config ``cfg`` until ``seconds`` pass."""
    fns = {f"{provider}:{op}": fn for provider, op, fn, *_ in cases(cfg, device, {})}
    if name not in fns:
        raise SystemExit(f"--loop must be one of {sorted(fns)}, got {name!r}")
    fn = fns[name]
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop:
        fn()


def _group(row: dict) -> tuple | None:
    """The rows a row's time is compared with: its config, op and L2 mode (not the copy)."""
    if row["op"] == "copy":
        return None
    return (
        f"mean dim {row['mean_dim']}",
        f"{row['lookups']} lookups",
        row["op"],
        f"L2 {row['l2']}",
    )


class _Kept:
    """Where ``measure`` puts a round's row: kept by ``main`` only if it is the fastest."""

    def add(self, row: dict) -> None:
        pass


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--shape", choices=sorted(SHAPES))
    p.add_argument("--rows", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--mean-dim", type=float, default=4.0)
    p.add_argument("--sweep", action="store_true", help="also mean dims 2, 6 and 4x lookups")
    p.add_argument(
        "--variants",
        action=argparse.BooleanOptionalAction,
        help="also time the kernel variants (VARIANTS; default: on CUDA only, the CPU "
        "kernels ignore them)",
    )
    p.add_argument("--no-compile", action="store_true", help="leave out padded-compile")
    add_l2_argument(p)
    p.add_argument("--repeats", type=int)
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="time every case this many times, round-robin over all cases, and keep each "
        "case's fastest median (on a shared machine, rounds slowed by other jobs drop out)",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument(
        "--loop",
        metavar="PROVIDER:OP",
        help="call one case of the first config (e.g. mixemb:bag) for --seconds, timing "
        "nothing and writing no rows: a workload for a profiler (bench/README.md)",
    )
    p.add_argument("--seconds", type=float, default=10.0, help="how long --loop runs")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    shape = args.shape or ("full" if device.type == "cuda" else "small")
    base = {"name": shape, **SHAPES[shape], "mean_dim": args.mean_dim}
    for key in ("rows", "batch"):
        if getattr(args, key) is not None:
            base[key] = getattr(args, key)
    configs = [base]
    if args.sweep:
        configs += [
            {**base, "mean_dim": 2.0},
            {**base, "mean_dim": 6.0},
            {**base, "batch": base["batch"] * 4},
        ]
    if args.loop:
        loop_case(
            args.loop, {**base, "lookups": base["batch"] * base["fields"]}, device, args.seconds
        )
        return []
    warmup, repeats = ITERS[device.type]
    repeats = args.repeats or repeats
    if args.rounds < 1:
        raise SystemExit(f"--rounds must be >= 1, got {args.rounds}")
    out, meta, copy_rate = start_run(args.out, device, bench=BENCH, shape=base)
    modes = l2_modes(args.l2, device)
    plan = []
    for cfg in configs:
        cfg = {**cfg, "lookups": cfg["batch"] * cfg["fields"]}
        variants = None if args.variants is None else (VARIANTS if args.variants else {})
        config_cases = cases(cfg, device, variants, compile_=not args.no_compile)
        plan += [(cfg, case, l2) for case in config_cases for l2 in modes]
    best: list[dict | None] = [None] * len(plan)
    for last in [False] * (args.rounds - 1) + [True]:
        for k, (cfg, (provider, op, fn, nbytes, nbytes_dram, table_bytes), l2) in enumerate(plan):
            row = measure(
                _Kept(),
                meta,
                bench=BENCH,
                shape=cfg,
                provider=provider,
                op=op,
                fn=fn,
                nbytes=nbytes,
                nbytes_dram=nbytes_dram,
                l2=l2,
                copy_gbps=copy_rate,
                device=device,
                warmup=warmup,
                repeats=repeats,
                table_mb=table_bytes / 1e6,
                bytes_per_row=round(table_bytes / cfg["rows"], 2),
                mean_dim=cfg["mean_dim"],
                lookups=cfg["lookups"],
            )
            if best[k] is None or _ms(row) < _ms(best[k]):
                best[k] = row
            if last:  # saved as soon as it is final, so a killed run keeps it
                out.add(best[k])
    rows = out.rows
    notes = compare_to_best_padded(rows, is_padded=padded.is_padded, group=_group)
    out.save()
    print(report(BENCH, meta, base, rows, COLUMNS, args.out, notes))
    return rows


if __name__ == "__main__":
    main()
