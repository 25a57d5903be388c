"""Shared bench helpers: timing, copy bandwidth, result rows, atomic JSON + Markdown output.

Every bench in this folder measures its providers side by side in one process and reports
each as: median ms, the op's ideal bytes (from ``mixemb.reference``), the memory-speed limit
= bytes / copy bandwidth, GB/s = bytes / time, and % of the copy bandwidth measured in the
same run (so rows from different machines compare as fractions of what that machine's
memory can do).
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from mixemb.train.checkpoint import atomic_write_text

REPO_ROOT = Path(__file__).resolve().parents[1]

# Copy sizes: big enough to leave the caches (H100 L2 is 50 MB, server L3 up to a few
# hundred MB), small enough to fit next to the bench's own tensors.
COPY_BYTES = {"cuda": 1 << 30, "cpu": 256 << 20}

# (warmup, repeats) per device type: GPU iterations are ~0.1 ms, CPU ones ~10 ms.
DEFAULT_ITERS = {"cuda": (10, 50), "cpu": (2, 7)}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> float:
    """Median wall time of ``fn()`` in ms: CUDA events on GPU, perf_counter on CPU.

    Each repeat is timed on its own (median, not mean, so one stray slow iteration does
    not move the result); caches stay warm between repeats, as they do in training.
    """
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    if device.type == "cuda":
        pairs = []
        for _ in range(repeats):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            pairs.append((start, end))
        torch.cuda.synchronize(device)
        times = [s.elapsed_time(e) for s, e in pairs]
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def copy_bandwidth(
    device: torch.device, nbytes: int | None = None, warmup: int = 2, repeats: int = 10
) -> tuple[float, float, int]:
    """Measure ``dst.copy_(src)`` of ``nbytes`` (default ``COPY_BYTES[device.type]``).

    Returns (GB/s, median ms, nbytes), with GB/s = 2 * nbytes / time (read + write), the
    same read + write accounting as the ideal-bytes formulas.
    """
    nbytes = COPY_BYTES[device.type] if nbytes is None else nbytes
    n = max(nbytes // 4, 1)
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device, warmup, repeats)
    nbytes = n * 4
    return gbps(2 * nbytes, ms), ms, nbytes


def gbps(nbytes: int, ms: float) -> float:
    return nbytes / (ms * 1e-3) / 1e9


def device_info(device: torch.device) -> str:
    """Human-readable device name, e.g. 'NVIDIA H100 80GB HBM3' or 'cpu: <model> (2 threads)'."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"cpu: {model} ({torch.get_num_threads()} threads)"


def git_commit(root: Path = REPO_ROOT) -> str | None:
    """Short commit hash of ``root`` (suffix '-dirty' with uncommitted changes), or None."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def run_metadata(device: torch.device) -> dict:
    """Fields shared by every row of one run: device, torch version, commit, date."""
    return {
        "device": device_info(device),
        "torch": torch.__version__,
        "commit": git_commit(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def result_row(
    meta: dict,
    *,
    bench: str,
    shape: dict,
    provider: str,
    op: str,
    ms: float | None,
    nbytes: int,
    copy_gbps: float,
    error: str | None = None,
) -> dict:
    """One result: ``meta`` + what ran + ms, ideal bytes, limit, GB/s and % of copy.

    ``limit_ms`` = nbytes / copy bandwidth: the time an ideal kernel would take here.
    ``ms=None`` (the provider failed) leaves the rate columns None.
    """
    rate = gbps(nbytes, ms) if ms else None
    return {
        **meta,
        "bench": bench,
        "shape": dict(shape),
        "provider": provider,
        "op": op,
        "ms": ms,
        "bytes": nbytes,
        "limit_ms": nbytes / copy_gbps / 1e6,
        "gbps": rate,
        "pct_of_copy": 100.0 * rate / copy_gbps if rate else None,
        "error": error,
    }


class RowsFile:
    """A JSON list of result rows in ``path`` that this run appends to, one row at a time.

    Rows of earlier runs are kept (each row carries device, commit and date). The file is
    rewritten atomically after every ``add``, so a run killed part-way (a step timeout on a
    lent GPU) keeps what it measured. A file that is not a JSON list is an error rather than
    silently overwritten.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.earlier: list[dict] = []
        if self.path.exists():
            self.earlier = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(self.earlier, list):
                raise ValueError(f"{self.path} does not hold a JSON list of rows")
        self.rows: list[dict] = []

    def add(self, row: dict) -> None:
        self.rows.append(row)
        atomic_write_text(json.dumps(self.earlier + self.rows, indent=1) + "\n", self.path)


def append_json_rows(path: Path, rows: Sequence[dict]) -> list[dict]:
    """Append ``rows`` to the JSON list in ``path`` (created if missing); returns all rows."""
    out = RowsFile(path)
    for row in rows:
        out.add(row)
    return out.earlier + out.rows


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


def markdown_table(rows: Sequence[dict], columns: Sequence[tuple[str, str]]) -> str:
    """Markdown table of ``rows``; ``columns`` are (key, header) pairs."""
    lines = [
        "| " + " | ".join(h for _, h in columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(k)) for k, _ in columns) + " |")
    return "\n".join(lines) + "\n"


def write_markdown(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (the latest run's table)."""
    atomic_write_text(text, path)


def measure(
    out: RowsFile,
    meta: dict,
    *,
    bench: str,
    shape: dict,
    provider: str,
    op: str,
    fn: Callable[[], object],
    nbytes: int,
    copy_gbps: float,
    device: torch.device,
    warmup: int,
    repeats: int,
    **extra: object,
) -> dict:
    """Time ``fn`` and add its row to ``out``; a failing provider gets a row with its
    traceback (``error``) instead of stopping the run."""
    ms, error = None, None
    try:
        ms = time_ms(fn, device, warmup, repeats)
    except Exception:  # e.g. no compiler for torch.compile: the other providers still run
        error = traceback.format_exc(limit=3)
        print(f"{provider} {op} failed:\n{error}", file=sys.stderr)
    row = result_row(
        meta,
        bench=bench,
        shape=shape,
        provider=provider,
        op=op,
        ms=ms,
        nbytes=nbytes,
        copy_gbps=copy_gbps,
        error=error,
    )
    row.update(extra)
    out.add(row)
    return row


def report(bench: str, meta: dict, shape: dict, rows: Sequence[dict], columns, out: Path) -> str:
    """The Markdown table of ``rows`` (with an "mb" column), written beside ``out`` as .md
    and returned."""
    shape_text = ", ".join(f"{k}={v}" for k, v in shape.items())
    table = markdown_table([{**r, "mb": r["bytes"] / 1e6} for r in rows], columns)
    text = (
        f"## {bench} on {meta['device']}\n\n"
        f"torch {meta['torch']}, commit {meta['commit']}, {meta['date']}\n\n"
        f"shape: {shape_text}\n\n{table}"
    )
    write_markdown(Path(out).with_suffix(".md"), text)
    return text


def start_run(
    path: Path, device: torch.device, *, bench: str, shape: dict, copy_bytes: int | None = None
) -> tuple[RowsFile, dict, float]:
    """Open the rows file, measure this run's copy bandwidth and record it as the first row.

    Returns (rows file, run metadata, copy bandwidth in GB/s) for :func:`measure`.
    """
    meta = run_metadata(device)
    copy_rate, copy_ms, copy_nbytes = copy_bandwidth(device, copy_bytes)
    out = RowsFile(path)
    out.add(
        result_row(
            meta,
            bench=bench,
            shape=shape,
            provider="torch",
            op="copy",
            ms=copy_ms,
            nbytes=2 * copy_nbytes,
            copy_gbps=copy_rate,
        )
    )
    return out, meta, copy_rate
