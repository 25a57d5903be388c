"""bench/gpu_check.sh: one device call's worth of steps, under a time budget, returning at
most the 8 files a device call brings back. Runs here on the steps that need no GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="a bash script")


def run_check(out: Path, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, **env}
    return subprocess.run(
        ["bash", str(SCRIPT)], env=full, capture_output=True, text=True, timeout=300
    )


def test_a_step_that_passes_comes_back_packed_in_few_files(tmp_path):
    out = tmp_path / "out"
    proc = run_check(out, ONLY="versions")
    assert proc.returncode == 0, proc.stdout + proc.stderr

    files = sorted(p.name for p in out.iterdir())
    assert files == ["gpu_check.tar.gz", "summary.json", "summary.txt"]
    summary = json.loads((out / "summary.json").read_text())
    assert [(s["step"], s["rc"], s["status"]) for s in summary["steps"]] == [("versions", 0, "ok")]
    with tarfile.open(out / "gpu_check.tar.gz") as tar:
        log = tar.extractfile("./versions.log").read().decode()
    assert "torch" in log


def test_a_failing_step_fails_the_run_and_the_others_still_report(tmp_path):
    # no GPU here: the install step cannot read a device capability and fails at once
    out = tmp_path / "out"
    proc = run_check(out, ONLY="versions install")
    assert proc.returncode == 1
    steps = json.loads((out / "summary.json").read_text())["steps"]
    assert [(s["step"], s["status"]) for s in steps] == [
        ("versions", "ok"),
        ("install", "FAILED"),
    ]
    assert "install" in (out / "summary.txt").read_text()


def test_steps_beyond_the_budget_are_skipped_not_run(tmp_path):
    out = tmp_path / "out"
    proc = run_check(out, BUDGET_S="10", MIN_STEP_S="20")
    assert proc.returncode == 1
    summary = json.loads((out / "summary.json").read_text())
    names = [s["step"] for s in summary["steps"]]
    assert names[:3] == ["versions", "install", "pytest_cuda"]
    assert {"bench_serve", "bench_train", "bench_reference"} <= set(names)
    assert all(s["status"].startswith("SKIPPED") and s["seconds"] == 0 for s in summary["steps"])
    assert len(list(out.iterdir())) <= 8
