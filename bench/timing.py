"""Timing one bench call: its device time and its host time, with the caches hot or cold.

``time_call`` gives two figures per call (a ``Timing``):

* ``ms``, the device time, median over the timed repeats. On CUDA the call is captured
  once into a CUDA graph and each repeat is one replay between an event pair; all repeats
  are queued behind a GPU sleep long enough for the host to queue every one of them, so the
  events see the GPU's work alone (gaps between the graph's kernels included, host time
  not). A call that cannot be captured (it synchronizes with the host, or does something a
  graph cannot hold) is timed the same way with the call itself in place of the replay, and
  ``note`` gives the reason. If the host still fell behind the GPU (a call that syncs),
  the sleep is retried 4× longer once, and ``note`` says when even that was not enough: ``ms``
  may then hold host time. On CPU, the wall time of the call (``perf_counter``): the op
  runs on the calling thread(s), so host and device time are one.
* ``host_us``, the host time per call in µs, median. On CUDA each call is timed alone with
  ``perf_counter``, never synchronized, in chunks of ``HOST_CHUNK`` calls with a
  synchronize between chunks (outside the timing), so the GPU's queue never fills and
  stalls the host; a call that synchronizes inside includes its wait. On CPU it is
  ``ms`` × 1000, the same measurement.

On CUDA a slow call gets fewer calls than asked, so that one measurement of an eager
autograd step (hundreds of ms at the full shape) does not take minutes: warmup stops after
``WARMUP_BUDGET_S`` (at least 2 calls), the timed repeats are cut to what fits in
``TIMED_BUDGET_S`` by the last warm call's time (at least ``MIN_REPEATS``), and the host
is timed over at most 2 × HOST_CHUNK calls; ``repeats`` records the count used. On CPU the
counts are as asked.

``l2``: "hot" times the repeats back to back, each finding in the caches what the last
one left (as a training or serving loop does); "cold" first writes a buffer of twice the
last-level cache (the GPU's L2, ``L2_cache_size``; on CPU the largest cache sysfs lists,
``CPU_CACHE_FALLBACK`` where it lists none) before each repeat, outside the timed region.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

L2_MODES = ("hot", "cold")
HOST_CHUNK = 8  # calls queued between two synchronizes while timing the host
WARMUP_BUDGET_S = 1.0
TIMED_BUDGET_S = 1.0
MIN_REPEATS = 5
# Host time to queue a repeat's event pair (and flush) around the call: sizes the GPU
# sleep that keeps the host ahead of the GPU.
REPEAT_OVERHEAD_US = 30.0
MAX_LEAD_MS = 5000.0
SLEEP_CALIBRATION_CYCLES = 2_000_000
CPU_CACHE_FALLBACK = 32 << 20
_CPU_CACHES = Path("/sys/devices/system/cpu/cpu0/cache")
_FLUSH_BUFFERS: dict[str, torch.Tensor] = {}
_CYCLES_PER_MS: dict[str, float] = {}


@dataclass(frozen=True)
class Timing:
    """One call's timing: ms (device, median), host_us (median), method ("cuda_graph",
    "cuda_events" or "cpu_wall"), l2 ("hot" or "cold"), repeats (the timed repeats ms is
    the median of) and note (why a CUDA call was not timed as a graph replay, or that the
    host fell behind; None when neither)."""

    ms: float
    host_us: float
    method: str
    l2: str
    repeats: int
    note: str | None = None


def add_l2_argument(parser) -> None:
    """The benches' ``--l2`` option (read back with :func:`l2_modes`)."""
    parser.add_argument(
        "--l2",
        choices=[*L2_MODES, "both"],
        help="caches kept hot between repeats, flushed before each (cold), or both rows "
        "(default: both on CUDA, hot on CPU)",
    )


def l2_modes(choice: str | None, device: torch.device) -> list[str]:
    """The L2 modes a bench runs for ``--l2`` (hot, cold or both; None: both on CUDA,
    hot elsewhere)."""
    choice = choice or ("both" if device.type == "cuda" else "hot")
    if choice not in ("hot", "cold", "both"):
        raise ValueError(f"l2 must be hot, cold or both, got {choice!r}")
    return list(L2_MODES) if choice == "both" else [choice]


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip()
    return int(text[:-1]) * units[text[-1]] if text[-1:] in units else int(text)


def last_level_cache_bytes(device: torch.device) -> int:
    """Bytes of the device's last-level cache: the GPU's L2; on CPU the largest cache of
    cpu0 in sysfs (CPU_CACHE_FALLBACK where there is none)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).L2_cache_size
    sizes = []
    for path in _CPU_CACHES.glob("index*/size"):
        try:
            sizes.append(_size(path.read_text()))
        except (OSError, ValueError):
            continue
    return max(sizes, default=CPU_CACHE_FALLBACK)


def flush_caches(device: torch.device) -> None:
    """Write a buffer of twice the last-level cache on ``device`` (allocated on first use
    and kept), evicting what the caches held."""
    key = str(device)
    buf = _FLUSH_BUFFERS.get(key)
    if buf is None:
        buf = torch.empty(2 * last_level_cache_bytes(device) // 4, dtype=torch.int32, device=device)
        _FLUSH_BUFFERS[key] = buf
    buf.zero_()


def time_call(
    fn: Callable[[], object],
    device: torch.device,
    warmup: int,
    repeats: int,
    l2: str = "hot",
) -> Timing:
    """Time ``fn()`` on ``device``: ``warmup`` untimed calls, then ``repeats`` timed ones
    (fewer for a slow call on CUDA; module docstring). l2: "hot" or "cold"."""
    if l2 not in L2_MODES:
        raise ValueError(f"l2 must be one of {L2_MODES}, got {l2!r}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if device.type != "cuda":
        for _ in range(warmup):
            fn()
        return _time_cpu(fn, device, repeats, l2)
    with torch.cuda.device(device):
        call_s = warm_up(fn, device, warmup)
        repeats = min(repeats, max(MIN_REPEATS, int(TIMED_BUDGET_S / max(call_s, 1e-9))))
        return _time_cuda(fn, device, repeats, l2)


def warm_up(fn: Callable[[], object], device: torch.device, warmup: int) -> float:
    """Up to ``warmup`` synchronized calls of ``fn()`` on CUDA (at least one; stopping
    once WARMUP_BUDGET_S is spent, after two); returns the last call's seconds."""
    spent = 0.0
    for done in range(1, max(warmup, 1) + 1):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        last = time.perf_counter() - t0
        spent += last
        if done >= 2 and spent > WARMUP_BUDGET_S:
            break
    return last


def _time_cpu(fn, device, repeats, l2) -> Timing:
    times = []
    for _ in range(repeats):
        if l2 == "cold":
            flush_caches(device)
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    ms = statistics.median(times)
    return Timing(ms=ms, host_us=ms * 1e3, method="cpu_wall", l2=l2, repeats=repeats)


def _time_cuda(fn, device, repeats, l2) -> Timing:
    torch.cuda.synchronize(device)
    host_us = host_us_per_call(fn, device, min(repeats, 2 * HOST_CHUNK))
    graph, note = capture_graph(fn, device)
    run = fn if graph is None else graph.replay
    run_host_us = host_us if graph is None else host_us_per_call(run, device, HOST_CHUNK)
    times, behind = device_times(run, device, repeats, l2, run_host_us)
    if behind:
        lag = "the host fell behind the GPU (a call that syncs?): ms may include host time"
        note = lag if note is None else f"{note}; {lag}"
    method = "cuda_events" if graph is None else "cuda_graph"
    del graph, run
    ms = statistics.median(times)
    return Timing(ms=ms, host_us=host_us, method=method, l2=l2, repeats=repeats, note=note)


def host_us_per_call(fn: Callable[[], object], device: torch.device, calls: int) -> float:
    """Median µs of host time per ``fn()`` on CUDA, never synchronized inside a chunk of
    HOST_CHUNK calls (module docstring)."""
    times: list[float] = []
    while len(times) < calls:
        torch.cuda.synchronize(device)
        for _ in range(min(HOST_CHUNK, calls - len(times))):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e6)
    torch.cuda.synchronize(device)
    return statistics.median(times)


def capture_graph(
    fn: Callable[[], object], device: torch.device
) -> tuple[torch.cuda.CUDAGraph | None, str | None]:
    """(graph of one ``fn()``, None), or (None, why it could not be captured). The graph is
    replayed once before it is returned; fn runs twice more (a side-stream warm call, as
    capture asks, and the capture itself)."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream(device).wait_stream(side)
        with torch.cuda.graph(graph):
            fn()
        graph.replay()
        torch.cuda.synchronize(device)
    except Exception as exc:  # a sync, a CPU tensor, an allocation the graph cannot hold
        torch.cuda.synchronize(device)
        lines = str(exc).strip().splitlines()
        reason = f"{type(exc).__name__}: {lines[0][:200] if lines else ''}"
        return None, f"no CUDA graph ({reason}); each call timed eagerly"
    return graph, None


def cycles_per_ms(device: torch.device) -> float:
    """GPU clock cycles of ``torch.cuda._sleep`` per ms, measured once per device."""
    key = str(device)
    if key not in _CYCLES_PER_MS:
        torch.cuda._sleep(1000)  # the first launch loads the kernel
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        torch.cuda._sleep(SLEEP_CALIBRATION_CYCLES)
        end.record()
        end.synchronize()
        _CYCLES_PER_MS[key] = SLEEP_CALIBRATION_CYCLES / max(start.elapsed_time(end), 1e-3)
    return _CYCLES_PER_MS[key]


def device_times(
    run: Callable[[], object],
    device: torch.device,
    repeats: int,
    l2: str,
    host_us: float,
) -> tuple[list[float], bool]:
    """(ms of each repeat of ``run()`` between its event pair, whether the host fell
    behind the GPU). Every repeat (and its flush when l2 is "cold") is queued behind a GPU
    sleep of twice the host time to queue them all; if the sleep had ended before the host
    finished queueing, the repeats are timed once more behind a sleep 4× as long."""
    cold = l2 == "cold"
    if cold:
        flush_caches(device)  # allocates the buffer outside the timing
    lead_ms = 2 * repeats * (host_us + REPEAT_OVERHEAD_US) / 1e3 + 0.2
    for _ in range(2):
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
        slept = torch.cuda.Event()
        torch.cuda.synchronize(device)
        torch.cuda._sleep(int(cycles_per_ms(device) * min(lead_ms, MAX_LEAD_MS)))
        slept.record()
        for start, end in zip(starts, ends):
            if cold:
                flush_caches(device)
            start.record()
            run()
            end.record()
        behind = slept.query()  # the GPU woke before the host had queued every repeat
        torch.cuda.synchronize(device)
        if not behind or lead_ms >= MAX_LEAD_MS:
            break
        lead_ms *= 4
    return [s.elapsed_time(e) for s, e in zip(starts, ends)], behind
