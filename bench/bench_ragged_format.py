"""Bytes per row of the two candidate ragged formats, on a real pruned table.

mask format (mixemb's): one 64-bit presence mask per row per 64 dims + one int64 base
offset per group of G rows + the kept values.
column-index format: one int64 offset per row (N+1) + a uint8 column index per kept value
+ the kept values.

    python bench/bench_ragged_format.py runs/demo/dnis/pruned.pt [--group-size 16]
"""

from __future__ import annotations

import argparse
import math

from mixemb.prune import load_pruned


def format_bytes(nnz: int, num_rows: int, dim: int, value_bytes: int, group_size: int) -> dict:
    words = max(math.ceil(dim / 64), 1)
    mask = num_rows * words * 8 + (math.ceil(num_rows / group_size) + 1) * 8 + nnz * value_bytes
    colidx = (num_rows + 1) * 8 + nnz * (1 if dim <= 256 else 2) + nnz * value_bytes
    return {"mask": mask, "column_index": colidx, "padded_dense": num_rows * dim * value_bytes}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("pruned", help="a pruned model file written by `mixemb prune`")
    p.add_argument("--group-size", type=int, default=16)
    args = p.parse_args(argv)
    model, _ = load_pruned(args.pruned)
    table = model.embedding.table
    n, k, nnz = table.num_embeddings, table.embedding_dim, table.nnz
    out = format_bytes(nnz, n, k, table.values.element_size(), args.group_size)
    print(f"{args.pruned}: N={n:,} K={k} nnz={nnz:,} (mean kept dim {nnz / n:.2f})")
    for name, b in out.items():
        print(
            f"  {name:13s} {b:>12,} B  {b / n:8.2f} B/row  metadata {(b - nnz * 4) / n:6.2f} B/row"
            if name != "padded_dense"
            else f"  {name:13s} {b:>12,} B  {b / n:8.2f} B/row"
        )
    assert out["mask"] == table.nbytes() or args.group_size != table.group_size
    return out


if __name__ == "__main__":
    main()
