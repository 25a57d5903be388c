"""bench/timing.py: device and host time per call, hot or cold caches, CUDA graph replay
with its eager fallback (the CUDA cases run where there is a GPU)."""

from __future__ import annotations

import importlib
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
HAS_CUDA = torch.cuda.is_available()
NEEDS_CUDA = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")


@pytest.fixture
def timing(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    module = importlib.import_module("timing")
    monkeypatch.setattr(module, "_FLUSH_BUFFERS", {})
    return module


class Counter:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, *args) -> None:
        self.calls += 1


def test_l2_modes_default_per_device(timing):
    assert timing.l2_modes(None, torch.device("cpu")) == ["hot"]
    assert timing.l2_modes(None, torch.device("cuda")) == ["hot", "cold"]
    assert timing.l2_modes("both", torch.device("cpu")) == ["hot", "cold"]
    assert timing.l2_modes("cold", torch.device("cuda")) == ["cold"]
    with pytest.raises(ValueError, match="hot, cold or both"):
        timing.l2_modes("warm", torch.device("cpu"))


@pytest.mark.parametrize(
    ("text", "nbytes"), [("32K", 32 << 10), ("32768K\n", 32 << 20), ("1M", 1 << 20), ("512", 512)]
)
def test_cache_sizes_parse_as_sysfs_writes_them(timing, text, nbytes):
    assert timing._size(text) == nbytes


def test_cpu_cache_size_is_the_largest_listed_or_the_fallback(timing, monkeypatch, tmp_path):
    for index, size in enumerate(["32K", "1024K", "32768K"]):
        (tmp_path / f"index{index}").mkdir()
        (tmp_path / f"index{index}" / "size").write_text(size + "\n")
    monkeypatch.setattr(timing, "_CPU_CACHES", tmp_path)
    assert timing.last_level_cache_bytes(torch.device("cpu")) == 32 << 20
    monkeypatch.setattr(timing, "_CPU_CACHES", tmp_path / "missing")
    assert timing.last_level_cache_bytes(torch.device("cpu")) == timing.CPU_CACHE_FALLBACK


def test_flush_writes_twice_the_last_level_cache(timing, monkeypatch):
    monkeypatch.setattr(timing, "last_level_cache_bytes", lambda device: 4096)
    cpu = torch.device("cpu")
    timing.flush_caches(cpu)
    buf = timing._FLUSH_BUFFERS["cpu"]
    assert buf.numel() * buf.element_size() == 2 * 4096
    buf.fill_(7)
    timing.flush_caches(cpu)  # the same buffer, written again
    assert timing._FLUSH_BUFFERS["cpu"] is buf and int(buf.abs().sum()) == 0


@pytest.mark.parametrize("l2", ["hot", "cold"])
def test_cpu_time_is_the_call_s_wall_time_and_cold_flushes_each_repeat(timing, monkeypatch, l2):
    flushes = Counter()
    monkeypatch.setattr(timing, "flush_caches", flushes)
    calls = Counter()
    t = timing.time_call(calls, torch.device("cpu"), warmup=2, repeats=5, l2=l2)
    assert calls.calls == 2 + 5
    assert flushes.calls == (5 if l2 == "cold" else 0)
    assert (t.method, t.l2, t.note, t.repeats) == ("cpu_wall", l2, None, 5)
    assert t.ms >= 0 and t.host_us == pytest.approx(t.ms * 1e3)


def test_time_call_rejects_bad_arguments(timing):
    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match="l2 must be one of"):
        timing.time_call(lambda: None, cpu, 0, 1, l2="both")
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        timing.time_call(lambda: None, cpu, 0, 0)


@pytest.mark.cuda
@NEEDS_CUDA
def test_cuda_graph_replays_the_call(timing):
    device = torch.device("cuda")
    x = torch.zeros(1024, device=device)
    graph, note = timing.capture_graph(lambda: x.add_(1), device)
    assert note is None and graph is not None
    before = float(x[0])  # the side-stream warm call, the capture (no effect), one replay
    graph.replay()
    torch.cuda.synchronize()
    assert float(x[0]) == before + 1
    t = timing.time_call(lambda: x.add_(1), device, warmup=2, repeats=5)
    assert (t.method, t.l2, t.note) == ("cuda_graph", "hot", None)
    assert t.ms > 0 and t.host_us > 0


@pytest.mark.cuda
@NEEDS_CUDA
def test_a_call_that_syncs_is_timed_eagerly_with_the_reason(timing):
    device = torch.device("cuda")
    x = torch.zeros(1024, device=device)

    def syncs():
        x.add_(1)
        return x.sum().item()

    t = timing.time_call(syncs, device, warmup=1, repeats=3)
    assert t.method == "cuda_events" and t.note.startswith("no CUDA graph")
    assert "fell behind" in t.note  # its .item() waits out the GPU sleep
    assert t.ms > 0


@pytest.mark.cuda
@NEEDS_CUDA
def test_cuda_cold_flushes_before_every_replay(timing, monkeypatch):
    device = torch.device("cuda")
    flushes = Counter()
    monkeypatch.setattr(timing, "flush_caches", flushes)
    x = torch.zeros(1024, device=device)
    t = timing.time_call(lambda: x.add_(1), device, warmup=1, repeats=4, l2="cold")
    assert t.l2 == "cold" and t.method == "cuda_graph"
    assert flushes.calls in (1 + 4, 1 + 2 * 4)  # the allocation, then one per repeat (a retry)


@pytest.mark.cuda
@NEEDS_CUDA
def test_cuda_flush_buffer_is_twice_the_l2(timing):
    device = torch.device("cuda")
    timing.flush_caches(device)
    buf = timing._FLUSH_BUFFERS[str(device)]
    l2 = torch.cuda.get_device_properties(device).L2_cache_size
    assert buf.numel() * buf.element_size() == 2 * l2 // 4 * 4


@pytest.mark.cuda
@NEEDS_CUDA
def test_a_slow_cuda_call_gets_fewer_calls(timing):
    device = torch.device("cuda")
    x = torch.zeros(16, device=device)
    calls = Counter()

    def slow():  # 0.3 s of host time a call: warmup stops after 4, 5 repeats are timed
        calls()
        time.sleep(0.3)
        x.add_(1)

    t = timing.time_call(slow, device, warmup=10, repeats=50)
    assert t.repeats == timing.MIN_REPEATS == 5
    assert calls.calls < 40
