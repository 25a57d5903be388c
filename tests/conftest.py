"""Shared fixtures: a private data cache and fake wheels that stand in for the registry."""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import pytest
import torch

# Without a GPU the Triton kernels run in Triton's CPU interpreter, which is chosen when
# the kernels are first imported: set it before any test imports them.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from mixemb import _ext
from mixemb.data import fetch

HAS_CUDA = torch.cuda.is_available()
NEEDS_GPU = pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU")
NEEDS_CUDA_EXT = pytest.mark.skipif(
    not (HAS_CUDA and _ext.HAS_CUDA_KERNELS), reason="needs a GPU and mixemb._C built with CUDA"
)
# The device every op and module test runs on: the same bodies on CPU (C++ CPU kernels,
# Triton's interpreter) and, where there is one, the GPU.
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, NEEDS_GPU])]


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    """The device name: "cpu", then "cuda" where a GPU is present (skipped elsewhere)."""
    return request.param


@pytest.fixture
def data_cache(tmp_path, monkeypatch) -> Path:
    """A fresh, empty $MIXEMB_DATA for the test."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("MIXEMB_DATA", str(cache))
    return cache


def build_wheel(path: Path, members: dict[str, str | bytes]) -> str:
    """Write a zip with ``members`` (name → text or bytes) at ``path``; returns its sha256."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return hashlib.sha256(path.read_bytes()).hexdigest()


class FakeRegistry:
    """A pinned fake wheel served by a replacement of ``fetch.pip_download``.

    key: the pin name; wheel: the pristine file; calls: requirements "downloaded";
    serve: callable returning the bytes the fake pip writes (replace it to simulate a
    bad mirror); fail: set to an exception to make the fake pip raise it.
    """

    def __init__(self, key: str, wheel: Path) -> None:
        self.key = key
        self.wheel = wheel
        self.calls: list[str] = []
        self.serve = wheel.read_bytes
        self.fail: Exception | None = None

    def pip(self, requirement: str, dest: Path) -> None:
        self.calls.append(requirement)
        if self.fail is not None:
            raise self.fail
        (dest / self.wheel.name).write_bytes(self.serve())


def install_fake_wheel(
    monkeypatch, tmp_path: Path, key: str, package: str, members: dict
) -> FakeRegistry:
    """Pin ``key`` to a fake ``package``-1.0 wheel holding ``members``; pip is faked."""
    src = tmp_path / f"{package.replace('-', '_')}-1.0-py3-none-any.whl"
    sha = build_wheel(src, members)
    monkeypatch.setitem(fetch.PINS, key, fetch.WheelPin(package, "1.0", src.name, sha))
    reg = FakeRegistry(key, src)
    monkeypatch.setattr(fetch, "pip_download", reg.pip)
    return reg


@pytest.fixture
def fake_registry(tmp_path, monkeypatch, data_cache) -> FakeRegistry:
    """A fake wheel pinned as "fake" (package fakepkg 1.0) with one small member."""
    members = {"fakepkg/data/ml.inter": "user_id:token\titem_id:token\n1\t2\n"}
    return install_fake_wheel(monkeypatch, tmp_path, "fake", "fakepkg", members)


ML100K_INTER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "".join(
    f"{u}\t{i}\t{1 + (u * 7 + i) % 5}\t{1000 + u * 100 + i}\n"
    for u in range(1, 11)
    for i in range(1, 9)
    if (u + i) % 3
)
ML100K_USER = (
    "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
    + "".join(f"{u}\t{20 + u}\t{'MF'[u % 2]}\tjob{u % 3}\t{90000 + u}\n" for u in range(1, 11))
)
ML100K_ITEM = (
    "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    + "".join(
        f"{i}\tMovie {i}\t{1990 + i % 4}\t{'Drama Comedy' if i % 2 else 'Horror'}\n"
        for i in range(1, 9)
    )
)


@pytest.fixture
def fake_ml100k(tmp_path, monkeypatch, data_cache) -> FakeRegistry:
    """The "recbole" pin replaced by a tiny wheel with ml-100k.inter/.user/.item (CRLF),
    so ``load_dataset("movielens-100k", ...)`` runs offline through the wheel path."""
    prefix = "recbole/dataset_example/ml-100k/ml-100k"
    members = {
        f"{prefix}.inter": ML100K_INTER.replace("\n", "\r\n"),
        f"{prefix}.user": ML100K_USER,
        f"{prefix}.item": ML100K_ITEM,
    }
    return install_fake_wheel(monkeypatch, tmp_path, "recbole", "recbole", members)
