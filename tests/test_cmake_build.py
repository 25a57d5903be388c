"""The C++ serving path: CMakeLists.txt builds the ops against LibTorch and ctest passes —
the ops through the dispatcher (test_ragged) and a pruned model's AOTInductor package
scoring a batch as Python does (serve_aoti) — and the serving-memory bench measures both
processes."""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# scripts/export_aoti.py's defaults: the package ctest's fixture exports
TINY = {"users": 500, "items": 2000, "dim": 32, "ratio": 0.2, "batch": 64, "history": 4}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed"),
]


@pytest.fixture(scope="module")
def cmake_build(tmp_path_factory) -> tuple[Path, str]:
    """(build folder, ctest's output) of one configure, build and ctest."""
    build = tmp_path_factory.mktemp("cmake") / "build"
    steps = [
        [
            "cmake",
            "-S",
            str(ROOT),
            "-B",
            str(build),
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
            f"-DPython3_EXECUTABLE={sys.executable}",
        ],
        ["cmake", "--build", str(build), "-j2"],
        ["ctest", "--test-dir", str(build), "--output-on-failure"],
    ]
    for cmd in steps:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 0, (
            f"{' '.join(cmd[:2])} failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
        )
    return build, proc.stdout


def test_cmake_build_and_ctest(cmake_build):
    _, out = cmake_build
    for test in ("ragged_ops", "aoti_package", "serve_aoti"):
        assert re.search(rf"{test} \.+\s+Passed", out), f"{test} did not pass:\n{out}"
    assert "100% tests passed, 0 tests failed out of 3" in out


def test_bench_serve_memory_measures_python_and_cpp(cmake_build, tmp_path, monkeypatch):
    build, _ = cmake_build
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    bench = importlib.import_module("bench_serve_memory")
    out = tmp_path / "rows.json"
    argv = [f"--{k}={v}" for k, v in TINY.items()]
    # ctest's package is reused as the pruned model; the unpruned one is exported here
    argv += ["--serve-aoti", str(build / "serve_aoti"), "--work", str(build / "aoti")]
    argv += ["--weights", "so", "--repeats", "1"]  # the weights-file package: the docs' run
    rows = bench.main([*argv, "--reuse", "--out", str(out)])
    assert [(r["model"], r["process"]) for r in rows] == [
        ("pruned to 0.2", "python"),
        ("pruned to 0.2", "c++ (weights in .so)"),
        ("unpruned", "python"),
        ("unpruned", "c++ (weights in .so)"),
    ]
    pruned, unpruned = rows[0]["table_mb"], rows[2]["table_mb"]
    assert pruned <= 0.2 * unpruned < pruned * 1.01  # the budget is spent, not exceeded
    for row in rows:
        steps = row["steps_kib"]
        assert 0 < steps["start"]["rss"] <= steps["scored"]["peak"]
        assert steps["scored"]["rss"] <= steps["scored"]["peak"]
    assert out.with_suffix(".md").read_text().count("\n| ") == 5  # header + 4 rows
