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


def test_more_fields_with_their_own_vocabularies():
    raw = make_synthetic(num_rows=30000, num_fields=4, vocab_sizes=[60, 50, 8, 3], seed=2)
    assert set(raw) == {"user_id", "item_id", "f2", "f3", "rating", "timestamp"}
    assert len(set(raw["f2"].tolist())) <= 8 and len(set(raw["f3"].tolist())) <= 3
    # the two-field generator is unchanged by the option
    two = make_synthetic(num_rows=500, seed=1)
    same = make_synthetic(num_rows=500, seed=1, num_fields=2, vocab_sizes=[500, 300])
    assert all(np.array_equal(two[k], same[k]) for k in two)
    # every field carries signal: fixing all four fields fixes the rating
    key = np.char.add(
        np.char.add(raw["user_id"].astype(str), raw["item_id"].astype(str)),
        np.char.add(raw["f2"].astype(str), raw["f3"].astype(str)),
    )
    _, inv = np.unique(key, return_inverse=True)
    means = np.bincount(inv, raw["rating"]) / np.bincount(inv)
    assert (raw["rating"] - means[inv]).std() < 0.15
    pair = np.char.add(raw["user_id"].astype(str), raw["item_id"].astype(str))
    _, inv2 = np.unique(pair, return_inverse=True)
    means2 = np.bincount(inv2, raw["rating"]) / np.bincount(inv2)
    assert (raw["rating"] - means2[inv2]).std() > 0.2  # user and item alone do not
    with pytest.raises(ValueError, match="num_fields"):
        make_synthetic(num_fields=1)
    with pytest.raises(ValueError, match="vocab_sizes has 2 entries for 3 fields"):
        make_synthetic(num_fields=3, vocab_sizes=[5, 5])
