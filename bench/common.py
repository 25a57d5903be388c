"""Shared bench helpers: copy bandwidth, result rows, atomic JSON + Markdown output.

Every bench in this folder measures its providers side by side in one process and reports
each as: median device ms and host µs per call (``timing.py``), the op's ideal bytes (from
``mixemb.reference``) with every lookup reading its row and, DRAM-only, each distinct row
read once, the memory-speed limit = bytes / copy bandwidth, GB/s = bytes / time, and % of
the copy bandwidth measured in the same run (so rows from different machines compare as
fractions of what that machine's memory can do), and each time over the fastest padded
baseline of its op.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import subprocess
import sys
import traceback
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path

import torch
from timing import Timing, time_call

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


def time_ms(
    fn: Callable[[], object], device: torch.device, warmup: int, repeats: int, l2: str = "hot"
) -> float:
    """Median device time of ``fn()`` in ms (``timing.time_call``: CUDA graph replays on
    GPU, ``perf_counter`` on CPU)."""
    return time_call(fn, device, warmup, repeats, l2).ms


def copy_bandwidth(
    device: torch.device, nbytes: int | None = None, warmup: int = 2, repeats: int = 10
) -> tuple[float, Timing, int]:
    """Measure ``dst.copy_(src)`` of ``nbytes`` (default ``COPY_BYTES[device.type]``).

    Returns (GB/s, its Timing, nbytes), with GB/s = 2 * nbytes / device time (read +
    write), the same read + write accounting as the ideal-bytes formulas.
    """
    nbytes = COPY_BYTES[device.type] if nbytes is None else nbytes
    n = max(nbytes // 4, 1)
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    timing = time_call(lambda: dst.copy_(src), device, warmup, repeats)
    nbytes = n * 4
    return gbps(2 * nbytes, timing.ms), timing, nbytes


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
    nbytes_dram: int | None = None,
    timing: Timing | None = None,
) -> dict:
    """One result: ``meta`` + what ran + ms, ideal bytes, limit, GB/s and % of copy, the
    same for the DRAM-only bytes, and how the time was taken.

    ``limit_ms`` = nbytes / copy bandwidth: the time an ideal kernel would take here.
    ``nbytes_dram``: the ideal bytes with each distinct row read once (None where the bench
    does not count them). ``timing``: where ``ms`` came from (host µs, method, L2 mode,
    note). ``ms=None`` (the provider failed) leaves the rate columns None.
    """
    rate = gbps(nbytes, ms) if ms else None
    rate_dram = gbps(nbytes_dram, ms) if ms and nbytes_dram is not None else None
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
        "bytes_dram": nbytes_dram,
        "limit_ms_dram": None if nbytes_dram is None else nbytes_dram / copy_gbps / 1e6,
        "pct_of_copy_dram": 100.0 * rate_dram / copy_gbps if rate_dram else None,
        "host_us": None if timing is None else timing.host_us,
        "timing": None if timing is None else timing.method,
        "timing_note": None if timing is None else timing.note,
        "l2": None if timing is None else timing.l2,
        "repeats": None if timing is None else timing.repeats,
        "vs_best_padded": None,  # set by compare_to_best_padded
        "best_padded": None,
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
        self.save()

    def save(self) -> None:
        """Rewrite the file (after this run's rows were changed in place)."""
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
    nbytes_dram: int | None = None,
    l2: str = "hot",
    **extra: object,
) -> dict:
    """Time ``fn`` (``timing.time_call`` with caches ``l2``: "hot" or "cold") and add its
    row to ``out``; a failing provider gets a row with its traceback (``error``) instead of
    stopping the run."""
    timing, error = None, None
    try:
        timing = time_call(fn, device, warmup, repeats, l2)
    except Exception:  # e.g. no compiler for torch.compile: the other providers still run
        error = traceback.format_exc(limit=3)
        print(f"{provider} {op} failed:\n{error}", file=sys.stderr)
    row = result_row(
        meta,
        bench=bench,
        shape=shape,
        provider=provider,
        op=op,
        ms=None if timing is None else timing.ms,
        nbytes=nbytes,
        copy_gbps=copy_gbps,
        error=error,
        nbytes_dram=nbytes_dram,
        timing=timing,
    )
    row["l2"] = l2
    row.update(extra)
    out.add(row)
    return row


def compare_to_best_padded(
    rows: Sequence[dict],
    *,
    is_padded: Callable[[dict], bool],
    group: Callable[[dict], Hashable | None],
) -> list[str]:
    """Set ``vs_best_padded`` (ms / the fastest padded row's ms) and ``best_padded`` (that
    row's provider) on each row of ``rows`` in place, within its group.

    group(row): the key of the rows compared with each other (an op, its shape, its L2
    mode), or None to leave a row out (the copy). is_padded(row): whether a row is a
    padded baseline. Rows of a group without a timed padded row, and failed rows, get None.
    Returns one line per group: its fastest padded provider and time.
    """
    best: dict = {}
    for row in rows:
        key = group(row)
        if key is None or row.get("ms") is None or not is_padded(row):
            continue
        if key not in best or row["ms"] < best[key]["ms"]:
            best[key] = row
    for row in rows:
        key = group(row)
        fastest = None if key is None else best.get(key)
        timed = fastest is not None and row.get("ms") is not None
        row["vs_best_padded"] = row["ms"] / fastest["ms"] if timed else None
        row["best_padded"] = fastest["provider"] if fastest is not None else None
    return [
        f"fastest padded, {_label(key)}: {row['provider']} {_fmt(row['ms'])} ms"
        for key, row in best.items()
    ]


def _label(key: Hashable) -> str:
    return ", ".join(map(str, key)) if isinstance(key, tuple) else str(key)


def report(
    bench: str,
    meta: dict,
    shape: dict,
    rows: Sequence[dict],
    columns,
    out: Path,
    notes: Sequence[str] = (),
) -> str:
    """The Markdown table of ``rows`` (with "mb" and "mb_dram" columns) and ``notes`` (one
    line each, e.g. the fastest padded provider per op; every timing note is added),
    written beside ``out`` as .md and returned."""
    shape_text = ", ".join(f"{k}={v}" for k, v in shape.items())
    table = markdown_table(
        [
            {
                **r,
                "mb": r["bytes"] / 1e6,
                "mb_dram": None if r.get("bytes_dram") is None else r["bytes_dram"] / 1e6,
            }
            for r in rows
        ],
        columns,
    )
    notes = list(notes) + [
        f"{r['provider']} {r['op']} (L2 {r.get('l2')}): {r['timing_note']}"
        for r in rows
        if r.get("timing_note")
    ]
    text = (
        f"## {bench} on {meta['device']}\n\n"
        f"torch {meta['torch']}, commit {meta['commit']}, {meta['date']}\n\n"
        f"shape: {shape_text}\n\n{table}"
    )
    if notes:
        text += "\n" + "".join(f"* {line}\n" for line in notes)
    write_markdown(Path(out).with_suffix(".md"), text)
    return text


def start_run(
    path: Path, device: torch.device, *, bench: str, shape: dict, copy_bytes: int | None = None
) -> tuple[RowsFile, dict, float]:
    """Open the rows file, measure this run's copy bandwidth and record it as the first row.

    Returns (rows file, run metadata, copy bandwidth in GB/s) for :func:`measure`.
    """
    meta = run_metadata(device)
    copy_rate, copy_timing, copy_nbytes = copy_bandwidth(device, copy_bytes)
    out = RowsFile(path)
    out.add(
        result_row(
            meta,
            bench=bench,
            shape=shape,
            provider="torch",
            op="copy",
            ms=copy_timing.ms,
            nbytes=2 * copy_nbytes,
            copy_gbps=copy_rate,
            nbytes_dram=2 * copy_nbytes,
            timing=copy_timing,
        )
    )
    return out, meta, copy_rate
