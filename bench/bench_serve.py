"""Serving a pruned table: mixemb's ragged ops vs the padded table vs the torch-ops reference.

Side by side in one process, on one realistically pruned table (K = 64, rows keep a
non-prefix set of dims, frequent rows more: per-row dims d = clamp(A·(1+row)^-0.35)
with A set for a target mean kept dim, 4 by default), Zipf lookups over
frequency-sorted ids:

* gather — ``mixemb.ops.ragged_gather`` (the extension) vs ``F.embedding`` on the unpruned
  (N, K) table vs ``ragged_gather_reference`` (torch ops); on CUDA each mixemb op is also
  timed on its other kernel variants (op arguments, ``VARIANTS``): ``mixemb-warp``, the
  one-warp-per-lookup kernels (``one_warp=True``), ``mixemb-u1`` … ``mixemb-u8``, the 16-lane
  kernels serving 1, 2, 4 or 8 lookups at once (``lookups_at_once``), and bags as
  ``mixemb-lanes`` and ``mixemb-lanes-u1`` … ``mixemb-lanes-u8``, the bag kernel whose lanes
  locate 32 lookups at once (``bag_kernel="lanes"``);
* gather_out — the same two gathers into an output buffer allocated once
  (``ragged_gather(..., out=)`` vs ``torch.index_select(..., out=)``): the kernels alone,
  without the allocation and first-touch page faults of a fresh output;
* bag — ``ragged_bag`` (sum, one bag per sample of F lookups) vs ``F.embedding_bag`` on the
  unpruned table;
* dot — ``ragged_dot`` of two lookups vs gather + multiply + sum on the unpruned table.

Each mixemb op also runs on the same pruned table stored with fp16 values
(``mixemb-fp16``) and as an int8 table (``mixemb-int8``: uint8 codes plus a per-row fp16
scale and bias, dequantized by the kernels into float32 rows).

Reports ms, ideal bytes (``mixemb.reference``), GB/s, % of the copy bandwidth measured in
the same run, and the bytes of each table, in all and per row. ``--sweep`` adds mean kept
dims 2 and 6 and other lookup counts.

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

from bench_reference import zipf_ids  # noqa: E402
from common import (  # noqa: E402
    measure,
    report,
    start_run,
)

from mixemb.ops import ragged_bag, ragged_dot, ragged_gather  # noqa: E402
from mixemb.ragged import RaggedTable  # noqa: E402
from mixemb.reference import (  # noqa: E402
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
    ("ms", "ms"),
    ("mb", "ideal MB"),
    ("gbps", "GB/s"),
    ("pct_of_copy", "% of copy"),
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


def cases(cfg: dict, device: torch.device, variants: dict | None = None):
    """(provider, op, fn, ideal bytes, table bytes) rows of one config; ``variants``
    (default: VARIANTS on CUDA, none on CPU, where the kernels ignore them) adds the mixemb
    ops' kernel variants."""
    n, k = cfg["rows"], cfg["dim"]
    dense = pruned_table(n, k, cfg["mean_dim"], device)
    table = RaggedTable.from_dense(dense)
    formats = {name: RaggedTable.from_dense(dense, dtype=d) for name, d in VALUE_FORMATS.items()}
    unpruned = torch.randn(n, k, device=device)  # what a padded table stores
    ids = zipf_ids(n, (cfg["batch"], cfg["fields"]), cfg["zipf"], device)
    flat = ids.reshape(-1)
    m = flat.numel()
    kept = int(table.row_dims()[flat].sum())
    offsets = torch.arange(0, m, cfg["fields"], device=device)
    ids_b = zipf_ids(n, (m,), cfg["zipf"], device, seed=1)
    kept_pair = kept + int(table.row_dims()[ids_b].sum())
    padded_bytes = unpruned.numel() * 4
    g = ragged_gather_bytes(m, k, kept)

    def ours(provider: str, kw: dict, bag_only: bool, tbl: RaggedTable = table) -> list:
        """The mixemb ops on ``tbl`` run with the kernel variant kw."""
        # the byte formulas' dtype: the values' (fp32, fp16) or "int8"
        dtype = "int8" if tbl.scale_bias is not None else tbl.values.dtype
        gb = ragged_gather_bytes(m, k, kept, dtype)
        bag_bytes = ragged_bag_bytes(m, cfg["batch"], k, kept, dtype)
        dot_bytes = ragged_dot_bytes(m, k, kept_pair, dtype)
        out = torch.empty(*ids.shape, k, dtype=tbl.rows_dtype, device=device)
        bag = [(provider, "bag", lambda: ragged_bag(tbl, flat, offsets, **kw), bag_bytes)]
        if bag_only:
            return [(*row, tbl.nbytes()) for row in bag]
        rows = [
            (provider, "gather", lambda: ragged_gather(tbl, ids, **kw), gb),
            # into a reused output buffer: the kernel without allocation and first-touch
            # page faults (most of a big fresh CPU output's cost)
            (provider, "gather_out", lambda: ragged_gather(tbl, ids, out=out, **kw), gb),
            *bag,
            (provider, "dot", lambda: ragged_dot(tbl, flat, tbl, ids_b, **kw), dot_bytes),
        ]
        return [(*row, tbl.nbytes()) for row in rows]

    out_padded = torch.empty(m, k, device=device)
    rows = [
        *ours("mixemb", {}, False),
        *[row for name, t in formats.items() for row in ours(f"mixemb-{name}", {}, False, t)],
        (
            "padded",
            "gather",
            lambda: F.embedding(ids, unpruned),
            padded_gather_bytes(m, k),
            padded_bytes,
        ),
        ("reference", "gather", lambda: ragged_gather_reference(table, ids), g, table.nbytes()),
        (
            "padded",
            "gather_out",
            lambda: torch.index_select(unpruned, 0, flat, out=out_padded),
            padded_gather_bytes(m, k),
            padded_bytes,
        ),
        (
            "padded",
            "bag",
            lambda: F.embedding_bag(flat, unpruned, offsets, mode="sum"),
            m * k * 4 + m * 8 + cfg["batch"] * k * 4,
            padded_bytes,
        ),
        (
            "padded",
            "dot",
            lambda: (unpruned[flat] * unpruned[ids_b]).sum(1),
            2 * m * k * 4 + 2 * m * 8 + m * 4,
            padded_bytes,
        ),
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
    fns = {f"{provider}:{op}": fn for provider, op, fn, _, _ in cases(cfg, device, {})}
    if name not in fns:
        raise SystemExit(f"--loop must be one of {sorted(fns)}, got {name!r}")
    fn = fns[name]
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop:
        fn()


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
    plan = []
    for cfg in configs:
        cfg = {**cfg, "lookups": cfg["batch"] * cfg["fields"]}
        variants = None if args.variants is None else (VARIANTS if args.variants else {})
        plan += [(cfg, case) for case in cases(cfg, device, variants)]
    best: list[dict | None] = [None] * len(plan)
    for _ in range(args.rounds):
        for k, (cfg, (provider, op, fn, nbytes, table_bytes)) in enumerate(plan):
            row = measure(
                _Kept(),
                meta,
                bench=BENCH,
                shape=cfg,
                provider=provider,
                op=op,
                fn=fn,
                nbytes=nbytes,
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
    for row in best:
        out.add(row)
    rows = out.rows
    print(report(BENCH, meta, base, rows, COLUMNS, args.out))
    return rows


if __name__ == "__main__":
    main()
