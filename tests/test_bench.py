"""bench/bench_reference.py runs end to end on a tiny shape and writes well-formed rows."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch

from mixemb.reference import (
    soft_select_fused_update_bytes,
    soft_select_lookup_bytes,
    soft_select_weight_grad_bytes,
)

ROOT = Path(__file__).resolve().parents[1]


def check_columns(rows: list[dict]) -> None:
    """The timing, DRAM and padded-comparison columns of a CPU run, consistent with each
    other and with the copy row."""
    copy = next(r for r in rows if r["op"] == "copy")
    for r in rows:
        assert r["error"] is None and r["timing"] == "cpu_wall" and r["l2"] in ("hot", "cold")
        assert r["host_us"] == pytest.approx(r["ms"] * 1e3)  # on CPU the same measurement
        assert 0 < r["bytes_dram"] <= r["bytes"]
        ratio = r["bytes_dram"] / r["bytes"]
        assert r["limit_ms_dram"] == pytest.approx(r["limit_ms"] * ratio)
        assert r["pct_of_copy"] == pytest.approx(100 * r["bytes"] / (r["ms"] * 1e6) / copy["gbps"])
        assert r["pct_of_copy_dram"] == pytest.approx(r["pct_of_copy"] * ratio)


def check_vs_best_padded(rows: list[dict], group, is_padded) -> None:
    """Each row's vs_best_padded is its ms over the fastest padded row of its group."""
    best: dict = {}
    for r in rows:
        if group(r) is not None and is_padded(r):
            best[group(r)] = min(best.get(group(r), float("inf")), r["ms"])
    assert best
    for r in rows:
        key = group(r)
        if key in best:
            assert r["vs_best_padded"] == pytest.approx(r["ms"] / best[key])
        else:
            assert r["vs_best_padded"] is None
    for key in best:
        assert any(is_padded(r) and r["vs_best_padded"] == 1.0 for r in rows if group(r) == key)


@pytest.fixture
def bench_reference(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    return importlib.import_module("bench_reference")


def test_zipf_ids_are_in_range_and_skewed(bench_reference):
    ids = bench_reference.zipf_ids(1000, (200, 5), 1.05, torch.device("cpu"))
    assert ids.dtype == torch.int64 and ids.shape == (200, 5)
    assert int(ids.min()) >= 0 and int(ids.max()) < 1000
    counts = torch.bincount(ids.reshape(-1), minlength=1000)
    assert counts[0] == counts.max() and counts[:10].sum() > counts[500:].sum()


def test_main_writes_rows_for_every_provider_and_op(bench_reference, tmp_path):
    out = tmp_path / "r.json"
    argv = ["--device", "cpu", "--no-compile", "--rows", "500", "--batch", "8", "--fields"]
    argv += ["4", "--warmup", "1", "--repeats", "2", "--copy-mib", "1", "--out", str(out)]
    rows = bench_reference.main(argv)
    main_again = bench_reference.main(argv)  # a second run appends, it does not overwrite

    saved = json.loads(out.read_text())
    assert len(saved) == len(rows) + len(main_again)
    assert {(r["provider"], r["op"]) for r in rows} == {
        ("torch", "copy"),
        ("eager", "soft_select_fwd"),
        ("eager", "soft_select_fwd_bwd"),
        ("eager", "padded_gather_fwd"),
    }
    for r in rows:
        assert r["error"] is None
        assert 0 < r["ms"] < 5000 and r["bytes"] > 0 and r["gbps"] > 0 and r["pct_of_copy"] > 0
        assert r["shape"]["rows"] == 500 and r["shape"]["lookups"] == 32
        assert r["torch"] == torch.__version__ and r["date"] and r["device"].startswith("cpu")
        assert r["l2"] == "hot"  # the default on CPU
    check_columns(rows)
    forward = {"soft_select_fwd", "padded_gather_fwd"}
    check_vs_best_padded(
        rows,
        group=lambda r: r["l2"] if r["op"] in forward else None,
        is_padded=lambda r: r["op"] == "padded_gather_fwd",
    )
    fwd_bwd = next(r for r in rows if r["op"] == "soft_select_fwd_bwd")
    fwd = next(r for r in rows if r["op"] == "soft_select_fwd")
    assert fwd["bytes_dram"] < fwd["bytes"]  # 32 Zipf lookups of 500 rows repeat some
    # the dense (N, K) weight gradient's zero fill is counted in both figures
    assert fwd_bwd["bytes"] - 500 * 64 * 4 > fwd["bytes"]
    text = out.with_suffix(".md").read_text()
    assert "| eager | soft_select_fwd |" in text and "fastest padded, forward, L2 hot" in text


def test_ragged_format_bytes_match_the_stored_table(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    fmt = importlib.import_module("bench_ragged_format")
    from mixemb.ragged import RaggedTable

    x = torch.randn(300, 64)
    x[torch.rand(300, 64) > 0.05] = 0
    table = RaggedTable.from_dense(x)
    sizes = fmt.format_bytes(table.nnz, 300, 64, 4, 16)
    assert sizes["mask"] == table.nbytes()
    assert sizes["column_index"] == 301 * 8 + table.nnz * 5


def test_bench_serve_runs_every_provider(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    serve = importlib.import_module("bench_serve")
    out = tmp_path / "serve.json"
    argv = ["--device", "cpu", "--rows", "2000", "--batch", "16", "--repeats", "1", "--no-compile"]
    rows = serve.main([*argv, "--l2", "both", "--out", str(out)])
    got = {(r["provider"], r["op"]) for r in rows}
    assert {
        ("mixemb", "gather"),
        ("padded", "gather"),
        ("reference", "gather"),
        ("mixemb", "gather_out"),
        ("padded", "gather_out"),
        ("mixemb", "bag"),
        ("padded", "bag"),
        ("mixemb", "dot"),
        ("padded", "dot"),
    } <= got
    assert all(r["ms"] > 0 for r in rows)
    assert json.loads(out.read_text())[-1]["op"] == "dot"
    check_columns(rows)
    timed = [r for r in rows if r["op"] != "copy"]
    hot = {(r["provider"], r["op"]) for r in timed if r["l2"] == "hot"}
    assert hot == {(r["provider"], r["op"]) for r in timed if r["l2"] == "cold"}
    assert len(timed) == 2 * len(hot)
    check_vs_best_padded(
        rows,
        group=lambda r: None if r["op"] == "copy" else (r["op"], r["l2"]),
        is_padded=lambda r: r["provider"].startswith("padded"),
    )


def test_pruned_bench_table_hits_its_mean_dim_with_hot_rows_keeping_more(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    serve = importlib.import_module("bench_serve")
    x = serve.pruned_table(5000, 64, 4.0, "cpu")
    dims = (x != 0).sum(1).double()
    assert abs(float(dims.mean()) - 4.0) < 0.3
    assert dims[:50].mean() > dims[-50:].mean()
    kept_pos = (x[:200] != 0).float().mean(0)
    assert kept_pos[32:].sum() > 0  # positions spread over all dims, not a prefix


def test_bench_train_runs_every_provider_and_op(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    train = importlib.import_module("bench_train")
    out = tmp_path / "train.json"
    argv = ["--device", "cpu", "--rows", "300", "--batch", "4", "--fields", "3", "--no-compile"]
    rows = train.main([*argv, "--repeats", "1", "--warmup", "0", "--out", str(out)])
    got = {(r["provider"], r["op"]) for r in rows if not r["error"]}
    assert {("op", op) for op in train.OPS} <= got
    assert {("reference", "both_step"), ("eager", "alpha_step")} <= got
    assert {("padded", "fwd"), ("padded", "bag_fwd")} <= got
    assert all(r["ms"] > 0 and r["bytes"] > 0 for r in rows)
    check_columns(rows)
    check_vs_best_padded(
        rows,
        group=lambda r: (r["op"], r["l2"]) if r["op"] in train.PADDED_OPS else None,
        is_padded=lambda r: r["provider"].startswith("padded"),
    )
    cfg = rows[0]["shape"]
    m, k, num_blocks = cfg["batch"] * cfg["fields"], cfg["dim"], cfg["blocks"]
    fill, u = cfg["rows"] * k * 4, cfg["unique_ids"]
    for unique in (None, u):
        fwd = soft_select_lookup_bytes(m, k, num_blocks, unique_rows=unique)
        step = soft_select_weight_grad_bytes(m, k, num_blocks, unique_rows=unique)
        assert train.ideal_bytes(cfg, "weights_step", unique_rows=unique) == fill + fwd + step
        sgd = soft_select_fused_update_bytes(m, k, num_blocks, unique_rows=unique)
        assert train.ideal_bytes(cfg, "weights_step_sgd", unique_rows=unique) == fwd + sgd
    sweep = train.sweep_configs({**train.SHAPES["full"], "ids_dtype": "int64"})
    assert len(sweep) == 6 * 3 * 5 and max(c["rows"] * c["dim"] * 4 for c in sweep) <= 1 << 30


def test_bench_host_overhead_runs_every_provider_and_op(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    host = importlib.import_module("bench_host_overhead")
    out = tmp_path / "host.json"
    rows = host.main(["--calls", "2", "--warmup", "1", "--repeats", "1", "--out", str(out)])
    got = {(r["provider"], r["op"]) for r in rows}
    assert {("floor", "weights_step_sgd"), ("lookup", "weights_step_sgd")} <= got
    assert {("reference", "alpha_step"), ("custom_op", "weights_step")} <= got
    serving = {"serve_gather", "serve_bag", "serve_bag_weighted", "serve_dot"}
    assert {(p, op) for p in ("ragged", "padded") for op in serving} <= got
    assert all(r["host_us"] > 0 for r in rows)
    assert json.loads(out.read_text()) == rows


def test_bench_serve_loop_runs_one_case_and_writes_nothing(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    serve = importlib.import_module("bench_serve")
    out = tmp_path / "serve.json"
    argv = ["--device", "cpu", "--rows", "2000", "--batch", "16", "--out", str(out)]
    assert serve.main([*argv, "--loop", "mixemb:bag", "--seconds", "0.1"]) == []
    assert not out.exists()
    with pytest.raises(SystemExit, match="--loop must be one of"):
        serve.main([*argv, "--loop", "mixemb:nope", "--seconds", "0.1"])
