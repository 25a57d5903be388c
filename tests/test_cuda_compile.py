"""Every CUDA source compiles with nvcc against the installed torch's headers.

The CPU machine has nvcc and the torch wheel's headers but no GPU and no CUDA torch, so
the CUDA kernels cannot run here; compiling them keeps a CUDA syntax or type error from
landing. (They run on a GPU machine through bench/gpu_check.sh.)
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch.utils.cpp_extension as cpp

ROOT = Path(__file__).resolve().parents[1]
CU_FILES = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))
NVCC = shutil.which("nvcc")


@pytest.mark.slow
@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed on this machine")
@pytest.mark.parametrize("source", CU_FILES, ids=lambda p: p.name)
def test_cuda_source_compiles(source, tmp_path):
    includes = [f"-I{p}" for p in cpp.include_paths()]
    cmd = [
        NVCC,
        "-c",
        "-std=c++20",
        "-O1",
        "-DUSE_CUDA",
        "-Xcompiler",
        "-fPIC",
        "-gencode",
        "arch=compute_90,code=sm_90",
        *includes,
        str(source),
        "-o",
        str(tmp_path / "out.o"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert proc.returncode == 0, "\n".join(errors[:20]) or proc.stderr[-3000:]
    assert (tmp_path / "out.o").stat().st_size > 0


def test_there_are_cuda_sources_to_compile():
    assert CU_FILES, "csrc/cuda/*.cu not found"
