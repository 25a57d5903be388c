"""The C++ serving path: CMakeLists.txt builds the ops against LibTorch and ctest passes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
def test_cmake_build_and_ctest(tmp_path):
    build = tmp_path / "build"
    steps = [
        [
            "cmake",
            "-S",
            str(ROOT),
            "-B",
            str(build),
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
        ],
        ["cmake", "--build", str(build), "-j2"],
        ["ctest", "--test-dir", str(build), "--output-on-failure"],
    ]
    for cmd in steps:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 0, (
            f"{' '.join(cmd[:2])} failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
        )
    assert "100% tests passed" in proc.stdout
