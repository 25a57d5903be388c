"""Serving a block-mask table: ``block_gather`` vs ``ragged_gather`` vs the padded gathers.

Side by side in one process, at bench_serve's shapes (K = 64, Zipf lookups over
frequency-sorted ids), on one table pruned to one column set per frequency block: L equal
blocks (10 by default), block l keeping d_l = clamp(round(A/(l+1)), 1, K) random columns
with A set for a target mean kept dim per row (4 by default), so hot blocks keep more:

* ``blocks``, ``blocks-fp16``, ``blocks-int8`` — ``mixemb.ops.block_gather`` on the table
  stored as a BlockTable of fp32, fp16 or int8 values (int8 rows dequantized to float32),
  its default kernel (C++ on CPU, Triton on CUDA); ``blocks-torch`` — the fp32 table
  through its vectorized PyTorch path (``backend="torch"``);
* ``ragged``, ``ragged-fp16``, ``ragged-int8`` — ``mixemb.ops.ragged_gather`` on the same
  pruned table stored as a RaggedTable (per-row masks and group offsets);
* ``padded`` — ``F.embedding`` on the unpruned (N, K) fp32 table, and ``padded-compiled``,
  ``torch.compile(padded_gather_reference)`` on it (``--no-compile`` leaves it out);
* ``reference`` — ``block_gather_reference`` (block by block, torch ops).

Reports ms, ideal bytes (``mixemb.reference.block_gather_bytes``, ``ragged_gather_bytes``,
``padded_gather_bytes``), GB/s, % of the copy bandwidth measured in the same run, and each
table's stored bytes, in all and per row. With ``--rounds R`` every case is timed R times,
round-robin, and keeps its fastest median (``ms``) beside the median of the R medians
(``ms_rounds``): on a shared machine, rounds slowed by other jobs drop out of the first.

    python bench/bench_serve_blocks.py --device cpu --rounds 5 # small shape on this CPU
    python bench/bench_serve_blocks.py --device cuda           # DEVELOPERS.md shape
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_reference import zipf_ids  # noqa: E402
from bench_serve import COLUMNS, ITERS, SHAPES, VALUE_FORMATS, _Kept, _ms  # noqa: E402
from common import compare_to_best_padded, measure, report, start_run  # noqa: E402

from mixemb.block_table import BlockTable  # noqa: E402
from mixemb.ops.block_table import block_gather  # noqa: E402
from mixemb.ops.ragged import ragged_gather  # noqa: E402
from mixemb.ragged import RaggedTable  # noqa: E402
from mixemb.reference import (  # noqa: E402
    block_gather_bytes,
    block_gather_reference,
    equal_boundaries,
    padded_gather_bytes,
    padded_gather_reference,
    ragged_gather_bytes,
)

BENCH = "bench_serve_blocks"
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / f"{BENCH}.json"
_AFTER_MS = COLUMNS.index(("ms", "ms")) + 1
ROUND_COLUMNS = [*COLUMNS[:_AFTER_MS], ("ms_rounds", "ms (median of rounds)"), *COLUMNS[_AFTER_MS:]]


def block_pruned_table(rows: int, dim: int, blocks: int, mean_dim: float, device, seed: int = 0):
    """(pruned (rows, dim) float32, boundaries (L+1,) int64, block_mask (L, dim) bool):
    L equal blocks, block l keeping clamp(round(A/(l+1)), 1, dim) random columns, A the
    scale whose mean kept dim per row is closest to mean_dim from below."""
    gen = torch.Generator(device=device).manual_seed(seed)
    boundaries = equal_boundaries(rows, blocks).to(device)
    sizes = boundaries.diff().double()
    decay = 1.0 / torch.arange(1, blocks + 1, device=device, dtype=torch.float64)
    lo, hi = 0.0, float(dim * blocks)
    for _ in range(60):  # the scale A that gives the target mean dim
        mid = (lo + hi) / 2
        mean = float(((mid * decay).round().clamp(1, dim) * sizes).sum() / rows)
        lo, hi = (mid, hi) if mean < mean_dim else (lo, mid)
    dims = (lo * decay).round().clamp(1, dim).long()
    ranks = torch.rand(blocks, dim, generator=gen, device=device).argsort(1).argsort(1)
    block_mask = ranks < dims.unsqueeze(1)
    row_mask = torch.repeat_interleave(block_mask, boundaries.diff(), dim=0)
    values = torch.randn(rows, dim, generator=gen, device=device)
    return values * row_mask, boundaries, block_mask


def cases(cfg: dict, device: torch.device, compile_padded: bool = True) -> list:
    """(provider, op, fn, ideal bytes, table bytes) rows of one config."""
    n, k, blocks = cfg["rows"], cfg["dim"], cfg["blocks"]
    pruned, boundaries, block_mask = block_pruned_table(n, k, blocks, cfg["mean_dim"], device)
    ids = zipf_ids(n, (cfg["batch"], cfg["fields"]), cfg["zipf"], device)
    m = ids.numel()
    kept = int((pruned[ids.reshape(-1)] != 0).sum())  # the values the lookups read
    formats = {"": None, **{f"-{name}": dtype for name, dtype in VALUE_FORMATS.items()}}
    rows = []
    for suffix, dtype in formats.items():
        table = BlockTable.from_block_mask(pruned, boundaries, block_mask, dtype)
        ragged = RaggedTable.from_dense(pruned, dtype=dtype)
        name = "int8" if dtype == "int8" else dtype or torch.float32
        rows += [
            (
                f"blocks{suffix}",
                "gather",
                lambda t=table: block_gather(t, ids),
                block_gather_bytes(m, blocks, k, kept, name),
                table.nbytes(),
            ),
            (
                f"ragged{suffix}",
                "gather",
                lambda t=ragged: ragged_gather(t, ids),
                ragged_gather_bytes(m, k, kept, name),
                ragged.nbytes(),
            ),
        ]
    table = BlockTable.from_block_mask(pruned, boundaries, block_mask)
    rows.append(
        (
            "blocks-torch",
            "gather",
            lambda: block_gather(table, ids, backend="torch"),
            block_gather_bytes(m, blocks, k, kept),
            table.nbytes(),
        )
    )
    unpruned = torch.randn(n, k, device=device)  # what a padded table stores
    padded = padded_gather_bytes(m, k)
    rows += [
        ("padded", "gather", lambda: F.embedding(ids, unpruned), padded, unpruned.nbytes),
        (
            "reference",
            "gather",
            lambda: block_gather_reference(table, ids),
            block_gather_bytes(m, blocks, k, kept),
            table.nbytes(),
        ),
    ]
    if compile_padded:
        compiled = torch.compile(padded_gather_reference)
        rows.append(
            ("padded-compiled", "gather", lambda: compiled(unpruned, ids), padded, unpruned.nbytes)
        )
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--shape", choices=sorted(SHAPES))
    p.add_argument("--rows", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--blocks", type=int, default=10)
    p.add_argument("--mean-dim", type=float, default=4.0)
    p.add_argument("--no-compile", action="store_true", help="leave out padded-compiled")
    p.add_argument("--repeats", type=int)
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="time every case this many times, round-robin, and keep each case's fastest "
        "median (ms) and the median of its medians (ms_rounds)",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    if args.rounds < 1:
        raise SystemExit(f"--rounds must be >= 1, got {args.rounds}")
    device = torch.device(args.device)
    shape = args.shape or ("full" if device.type == "cuda" else "small")
    cfg = {"name": shape, **SHAPES[shape], "mean_dim": args.mean_dim, "blocks": args.blocks}
    for key in ("rows", "batch"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    cfg["lookups"] = cfg["batch"] * cfg["fields"]
    warmup, repeats = ITERS[device.type]
    repeats = args.repeats or repeats
    out, meta, copy_rate = start_run(args.out, device, bench=BENCH, shape=cfg)
    plan = cases(cfg, device, not args.no_compile)
    common = {"bench": BENCH, "shape": cfg, "copy_gbps": copy_rate, "device": device}
    common.update(warmup=warmup, repeats=repeats, mean_dim=cfg["mean_dim"])
    common.update(lookups=cfg["lookups"], rounds=args.rounds)
    timed: list[list[dict]] = [[] for _ in plan]
    for _ in range(args.rounds):
        for k, (provider, op, fn, nbytes, table_bytes) in enumerate(plan):
            per_row = round(table_bytes / cfg["rows"], 2)
            row = measure(_Kept(), meta, provider=provider, op=op, fn=fn, nbytes=nbytes,
                          table_mb=table_bytes / 1e6, bytes_per_row=per_row, **common)  # fmt: skip
            timed[k].append(row)
    for rounds in timed:
        best = min(rounds, key=_ms)
        ok = [r["ms"] for r in rounds if r["ms"] is not None]
        out.add({**best, "ms_rounds": statistics.median(ok) if ok else None})
    rows = out.rows
    notes = compare_to_best_padded(
        rows,
        is_padded=lambda r: r["provider"].startswith("padded"),
        group=lambda r: None if r["op"] == "copy" else r["op"],
    )
    out.save()
    print(report(BENCH, meta, cfg, rows, ROUND_COLUMNS, args.out, notes))
    return rows


if __name__ == "__main__":
    main()
