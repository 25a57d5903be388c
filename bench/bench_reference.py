"""Bench: the pure-PyTorch DNIS lookup x alpha against its memory-speed limit.

Side by side in one process, on one Zipf-distributed batch of ids:

* eager   soft_select_fwd      reference forward, weight[ids] * alpha[block(ids)]
* eager   soft_select_fwd_bwd  forward + autograd backward (dense weight grad, alpha grad)
                               + normalize_alpha_grad (the alpha step's normalization)
* eager   padded_gather_fwd    F.embedding, the uniform-dimension lookup it replaces
* compile soft_select_fwd / soft_select_fwd_bwd / padded_gather_fwd   torch.compile of the
                               same references
* triton  padded_gather_fwd    the hand-written Triton gather of ``padded_triton.py`` (CUDA)
* torch   copy                 dst.copy_(src), the bandwidth the % column is relative to

Ideal bytes come from ``mixemb.reference`` (formulas in its docstring and bench/README.md),
twice: with every lookup reading its row (``bytes``, unique_rows=None, the upper bound
behind the documented limits) and with each of the batch's ``unique_ids`` distinct rows
read once (``bytes_dram``). soft_select_fwd_bwd's autograd gives a dense (N, K) weight
gradient: its zero fill, N·K·itemsize written, is counted in both. Times are device ms and
host µs per call (``timing.py``), with the L2 hot, cold or both (``--l2``);
``vs_best_padded`` divides soft_select_fwd's and padded_gather_fwd's times by the fastest
padded_gather_fwd provider.

    python bench/bench_reference.py                       # cuda: full shape; cpu: small
    python bench/bench_reference.py --device cpu --no-compile
    python bench/bench_reference.py --shape full --rows 1000000 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from common import (
    DEFAULT_ITERS,
    compare_to_best_padded,
    measure,
    report,
    start_run,
)
from timing import add_l2_argument, l2_modes

from mixemb.reference import (
    equal_boundaries,
    normalize_alpha_grad,
    padded_gather_bytes,
    padded_gather_reference,
    soft_select_lookup_backward_bytes,
    soft_select_lookup_bytes,
    soft_select_lookup_reference,
)

BENCH = "bench_reference"

# The one place sizes live. "full" is the documented anchor shape (4M rows, K = 64,
# 10 equal blocks, a 16384 x 26 CTR batch); "small" keeps a 2-core CPU run under a minute.
SHAPES = {
    "full": dict(
        rows=4_000_000, dim=64, blocks=10, batch=16384, fields=26, zipf=1.05, dtype="float32"
    ),
    "small": dict(
        rows=200_000, dim=64, blocks=10, batch=2048, fields=26, zipf=1.05, dtype="float32"
    ),
}

L1 = 1e-5  # the authors' lambda; only affects the normalization's input, not the timing
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / f"{BENCH}.json"
TABLE_COLUMNS = [
    ("provider", "provider"),
    ("op", "op"),
    ("l2", "L2"),
    ("ms", "ms"),
    ("host_us", "host µs"),
    ("mb", "ideal MB"),
    ("limit_ms", "limit ms"),
    ("gbps", "GB/s"),
    ("pct_of_copy", "% of copy"),
    ("mb_dram", "DRAM MB"),
    ("pct_of_copy_dram", "% of copy (DRAM)"),
    ("vs_best_padded", "vs best padded"),
    ("timing", "timing"),
]
PADDED_OP = "padded_gather_fwd"


def zipf_ids(
    num_rows: int, shape: tuple[int, ...], s: float, device: torch.device, seed: int = 0
) -> torch.Tensor:
    """(shape) int64 ids in [0, num_rows) with P(id = i) proportional to (i + 1) ** -s.

    Ids are frequency-sorted (id 0 hottest), as mixemb re-maps them. Vectorised inverse
    CDF: searchsorted of uniforms in a float64 cumulative-weight table (4M rows: 32 MB,
    milliseconds on a GPU).
    """
    ranks = torch.arange(1, num_rows + 1, dtype=torch.float64, device=device)
    cdf = torch.cumsum(ranks.pow(-s), 0)
    cdf /= cdf[-1].clone()
    gen = torch.Generator(device=device).manual_seed(seed)
    u = torch.rand(shape, generator=gen, dtype=torch.float64, device=device)
    return torch.searchsorted(cdf, u).clamp_(max=num_rows - 1)


def build_config(args: argparse.Namespace, device: torch.device) -> dict:
    shape = args.shape or ("full" if device.type == "cuda" else "small")
    cfg = {"name": shape, **SHAPES[shape]}
    for key in ("rows", "dim", "blocks", "batch", "fields", "zipf", "dtype"):
        value = getattr(args, key)
        if value is not None:
            cfg[key] = value
    cfg["ids_dtype"] = args.ids_dtype
    cfg["lookups"] = cfg["batch"] * cfg["fields"]
    return cfg


def make_cases(cfg: dict, device: torch.device, compile_: bool) -> list[tuple]:
    """(provider, op, fn, ideal bytes, DRAM-only ideal bytes) for every measurement of
    this bench.

    Also sets ``cfg["unique_ids"]``, the number of distinct ids in the sampled batch.
    """
    dtype = getattr(torch, cfg["dtype"])
    ids_dtype = getattr(torch, cfg["ids_dtype"])
    n, k, num_blocks = cfg["rows"], cfg["dim"], cfg["blocks"]
    gen = torch.Generator(device=device).manual_seed(1)
    weight = torch.randn(n, k, generator=gen, device=device, dtype=torch.float32).to(dtype)
    alpha = torch.rand(num_blocks, k, generator=gen, device=device, dtype=torch.float32)
    alpha = alpha.to(dtype)
    boundaries = equal_boundaries(n, num_blocks).to(device)
    ids = zipf_ids(n, (cfg["batch"], cfg["fields"]), cfg["zipf"], device).to(ids_dtype)
    cfg["unique_ids"] = int(torch.unique(ids).numel())
    dout = torch.randn(*ids.shape, k, generator=gen, device=device, dtype=torch.float32)
    dout = dout.to(dtype)
    w_train = weight.clone().requires_grad_()
    a_train = alpha.clone().requires_grad_()

    m, u = cfg["lookups"], cfg["unique_ids"]

    def both(f) -> tuple[int, int]:
        """(every lookup reading its row, each distinct row read once) bytes of ``f``."""
        return tuple(f(m, k, num_blocks, dtype, ids_dtype, unique_rows=r) for r in (None, u))

    fwd_bytes = both(soft_select_lookup_bytes)
    gather_bytes = both(_gather_bytes)
    fill = n * k * dtype.itemsize  # the dense weight gradient's zero fill
    fwd_bwd_bytes = tuple(
        f + b + fill for f, b in zip(fwd_bytes, both(soft_select_lookup_backward_bytes))
    )

    def fwd_of(lookup):
        def fwd():
            with torch.no_grad():
                return lookup(weight, alpha, boundaries, ids)

        return fwd

    def fwd_bwd_of(lookup, normalize):
        def fwd_bwd():
            w_train.grad = None
            a_train.grad = None
            lookup(w_train, a_train, boundaries, ids).backward(dout)
            return normalize(a_train.grad, a_train.detach(), L1)

        return fwd_bwd

    def gather():
        with torch.no_grad():
            return padded_gather_reference(weight, ids)

    cases = [
        ("eager", "soft_select_fwd", fwd_of(soft_select_lookup_reference), *fwd_bytes),
        (
            "eager",
            "soft_select_fwd_bwd",
            fwd_bwd_of(soft_select_lookup_reference, normalize_alpha_grad),
            *fwd_bwd_bytes,
        ),
        ("eager", PADDED_OP, gather, *gather_bytes),
    ]
    if compile_:
        # Separate compiled objects for inference and training graphs, so neither
        # recompiles when the other runs.
        lookup_fwd = torch.compile(soft_select_lookup_reference, dynamic=False)
        lookup_train = torch.compile(soft_select_lookup_reference, dynamic=False)
        normalize = torch.compile(normalize_alpha_grad, dynamic=False)
        gather_c = torch.compile(padded_gather_reference, dynamic=False)
        cases += [
            ("compile", "soft_select_fwd", fwd_of(lookup_fwd), *fwd_bytes),
            (
                "compile",
                "soft_select_fwd_bwd",
                fwd_bwd_of(lookup_train, normalize),
                *fwd_bwd_bytes,
            ),
            ("compile", PADDED_OP, lambda: gather_c(weight, ids), *gather_bytes),
        ]
    if device.type == "cuda":
        from padded_triton import padded_gather

        cases.append(("triton", PADDED_OP, lambda: padded_gather(weight, ids), *gather_bytes))
    return cases


def _gather_bytes(m, k, num_blocks, dtype, ids_dtype, unique_rows=None) -> int:
    """``padded_gather_bytes`` with the lookup formulas' arguments (num_blocks unused)."""
    return padded_gather_bytes(m, k, dtype, ids_dtype, unique_rows=unique_rows)


def _group(row: dict) -> tuple | None:
    """The rows a row's time is compared with: the forward lookups (soft_select_fwd and
    the padded gathers) of one L2 mode; None for the rest (no padded counterpart)."""
    if row["op"] in ("soft_select_fwd", PADDED_OP):
        return ("forward", f"L2 {row['l2']}")
    return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--shape", choices=sorted(SHAPES), default=None, help="default: full on cuda, else small"
    )
    p.add_argument("--rows", type=int, help="N, table rows")
    p.add_argument("--dim", type=int, help="K, max embedding dimension")
    p.add_argument("--blocks", type=int, help="L, equal frequency blocks")
    p.add_argument("--batch", type=int, help="samples per batch")
    p.add_argument("--fields", type=int, help="categorical fields per sample")
    p.add_argument("--zipf", type=float, help="Zipf exponent s of the id distribution")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--ids-dtype", choices=["int64", "int32"], default="int64")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile(reference)")
    add_l2_argument(p)
    p.add_argument("--warmup", type=int, help="untimed iterations (default per device)")
    p.add_argument("--repeats", type=int, help="timed iterations (default per device)")
    p.add_argument("--copy-mib", type=int, help="copy-bandwidth buffer size (default per device)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON rows are appended here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the bench; returns this run's rows (also appended to --out, table to .md)."""
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but torch.cuda.is_available() is False")
    cfg = build_config(args, device)
    warmup, repeats = DEFAULT_ITERS[device.type]
    warmup = warmup if args.warmup is None else args.warmup
    repeats = repeats if args.repeats is None else args.repeats
    copy_bytes = None if args.copy_mib is None else args.copy_mib << 20

    cases = make_cases(cfg, device, compile_=not args.no_compile)
    # Rows are saved one by one, so a run killed part-way keeps what it measured.
    out, meta, copy_rate = start_run(
        args.out, device, bench=BENCH, shape=cfg, copy_bytes=copy_bytes
    )
    for provider, op, fn, nbytes, nbytes_dram in cases:
        for l2 in l2_modes(args.l2, device):
            measure(
                out,
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
            )
    rows = out.rows
    notes = compare_to_best_padded(rows, is_padded=lambda r: r["op"] == PADDED_OP, group=_group)
    out.save()
    print(report(BENCH, meta, cfg, rows, TABLE_COLUMNS, args.out, notes))
    return rows


if __name__ == "__main__":
    sys.exit(1 if any(r["error"] for r in main()) else 0)
