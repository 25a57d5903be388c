"""Packaging: `mixemb.kernels` imports from the editable install and from a fresh-venv wheel."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

import mixemb

ROOT = Path(__file__).resolve().parents[1]


def test_kernels_package_maps_to_top_level_folder():
    import mixemb.kernels

    assert Path(mixemb.kernels.__file__).resolve().parent == ROOT / "kernels"
    assert Path(mixemb.__file__).resolve().parent == ROOT / "mixemb"


@pytest.mark.slow
def test_wheel_installs_and_imports_in_fresh_venv(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-build-isolation",
            "--no-deps",
            "-q",
            "-w",
            str(dist),
            str(ROOT),
        ],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = dist.glob("mixemb-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "mixemb/kernels/__init__.py" in names
    assert "mixemb/data/schema.py" in names
    assert not any(n.startswith(("tests/", "bench/", "kernels/")) for n in names), names

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    # The fresh venv borrows this interpreter's third-party packages (torch, numpy) through a
    # .pth file instead of re-installing GBs; mixemb itself comes only from the wheel.
    purelib = sysconfig.get_paths()["purelib"]
    target = subprocess.run(
        [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(target, "borrowed.pth").write_text(purelib + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", target, str(wheel)],
        check=True,
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = (
        "import mixemb, mixemb.kernels, mixemb.cli, mixemb.models, mixemb.data, mixemb.train;"
        "import os; print(os.path.dirname(mixemb.kernels.__file__))"
    )
    out = subprocess.run(
        [py, "-I", "-c", code], check=True, capture_output=True, text=True, cwd=tmp_path, env=env
    ).stdout.strip()
    assert Path(out) == Path(target) / "mixemb" / "kernels"
    assert mixemb.__version__  # the in-tree one; the wheel's import above is what counts
