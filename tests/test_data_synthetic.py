"""Synthetic data: power-law frequencies, planted signal, every task through the same path."""

from __future__ import annotations

import time

import numpy as np
import pytest

from mixemb.data import load_dataset, make_synthetic


def test_power_law_and_columns():
    raw = make_synthetic(num_rows=5000, num_users=100, num_items=80, seed=1)
    assert set(raw) == {"user_id", "item_id", "rating", "timestamp"}
    assert all(len(v) == 5000 for v in raw.values())
    counts = np.sort(np.unique(raw["user_id"].astype(str), return_counts=True)[1])[::-1]
    assert counts[0] > 10 * np.median(counts)  # power-law: a few users dominate
    assert raw["rating"].min() >= 1 and raw["rating"].max() <= 5
    assert len(np.unique(raw["timestamp"])) == 5000


def test_seeded_and_signal_is_learnable():
    a = make_synthetic(num_rows=20000, num_users=50, num_items=40, noise=0.05, seed=3)
    b = make_synthetic(num_rows=20000, num_users=50, num_items=40, noise=0.05, seed=3)
    c = make_synthetic(num_rows=20000, num_users=50, num_items=40, noise=0.05, seed=4)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["rating"], c["rating"])
    # the same (user, item) pair always gets nearly the same rating: the signal is planted
    pair = np.char.add(a["user_id"].astype(str), a["item_id"].astype(str))
    _, inv = np.unique(pair, return_inverse=True)
    means = np.bincount(inv, a["rating"]) / np.bincount(inv)
    resid = a["rating"] - means[inv]
    assert resid.std() < 0.1 < a["rating"].std()


def test_ctr_labels_are_bernoulli_of_the_signal():
    raw = make_synthetic(num_rows=20000, num_users=50, num_items=40, task="ctr", seed=0)
    assert "rating" not in raw and set(np.unique(raw["label"])) == {0.0, 1.0}
    assert 0.2 < raw["label"].mean() < 0.8
    with pytest.raises(ValueError, match="rating or ctr"):
        make_synthetic(task="topk")
    with pytest.raises(ValueError, match=">= 1"):
        make_synthetic(num_users=0)


@pytest.mark.parametrize("task", ["rating", "ctr", "topk"])
def test_every_task_loads_fast_with_defaults(task):
    t0 = time.perf_counter()
    ds = load_dataset("synthetic", task)
    assert time.perf_counter() - t0 < 1.0
    assert len(ds.train) > 0 and len(ds.valid) > 0 and len(ds.test) > 0 and ds.num_fields == 2
    assert np.all(np.diff(ds.encoder.frequencies) <= 0)
    if task == "ctr":
        assert set(ds.train.labels.unique().tolist()) == {0.0, 1.0}
    if task == "topk":
        assert ds.test.group_size == 100 and ds.train_sampler is not None
    again = load_dataset("synthetic", task)
    assert np.array_equal(again.test.ids.numpy(), ds.test.ids.numpy())


def test_options_reach_the_generator_and_scale():
    ds = load_dataset("synthetic", "rating", num_rows=1000, num_users=30, num_items=20)
    assert sum(ds.info["rows"].values()) == 1000 and ds.num_features <= 30 + 20 + 2
    t0 = time.perf_counter()
    raw = make_synthetic(num_rows=2_000_000, num_users=100_000, num_items=20_000)
    assert len(raw["user_id"]) == 2_000_000 and time.perf_counter() - t0 < 5.0
