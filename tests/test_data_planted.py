"""The planted benchmark: Criteo-like schema, known signal dimensions, registered loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mixemb.data import DATASETS, PlantedDataset, fetch_dataset, load_dataset, make_planted
from mixemb.data.planted import (
    NO_PLANTED_DIM,
    field_cardinalities,
    rankdata,
    recovery,
    spearman,
)
from mixemb.metrics import auc, logloss
from mixemb.models import build_model
from mixemb.train import TrainConfig, fit

TINY = dict(num_rows=6000, scale=0.001, dim=8)


def test_cardinalities_span_a_few_values_to_a_million():
    cards = field_cardinalities(26, 1.0, 3, 1_000_000)
    assert len(cards) == 26 and cards[0] == 3 and cards[-1] == 1_000_000
    ratios = np.diff(np.log(cards))
    assert np.all(ratios > 0) and np.ptp(ratios[5:]) < 0.05  # log-spaced
    small = field_cardinalities(26, 0.001, 3, 1_000_000)
    assert small[0] == 3 and small[-1] == 1000 and np.all(np.diff(small) >= 0)
    with pytest.raises(ValueError, match="scale must be > 0"):
        field_cardinalities(26, 0.0, 3, 1_000_000)


def test_columns_follow_the_schema_and_zipf():
    data = make_planted(**TINY, seed=1)
    assert data.field_names == [f"C{j}" for j in range(1, 27)]
    assert set(data.columns) == {*data.field_names, "label"}
    for name, card, values in zip(data.field_names, data.cardinalities, data.values):
        seen = set(data.columns[name].tolist())
        assert seen <= set(values.tolist()) and len(values) == card
    counts = np.sort(np.unique(data.columns["C26"], return_counts=True)[1])[::-1]
    assert counts[0] > 20 * np.median(counts)  # heavy head, long tail
    assert set(np.unique(data.columns["label"])) == {0.0, 1.0}


@pytest.mark.parametrize("options", [{}, {"basis": "field", "dims_law": "hump", "noise": 0.5}])
def test_seeded_deterministic(options):
    a = make_planted(**TINY, seed=3, **options)
    b = make_planted(**TINY, seed=3, **options)
    c = make_planted(**TINY, seed=4, **options)
    assert all(np.array_equal(a.columns[k], b.columns[k]) for k in a.columns)
    assert all(np.array_equal(x, y) for x, y in zip(a.dims, b.dims))
    assert not np.array_equal(a.columns["label"], c.columns["label"])
    assert not all(np.array_equal(x, y) for x, y in zip(a.dims, c.dims))


def test_spearman_ranks_with_ties():
    assert np.array_equal(rankdata(np.array([3.0, 1.0, 3.0, 2.0])), [2.5, 0.0, 2.5, 1.0])
    x = np.arange(50.0)
    assert spearman(x, x**3) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert np.isnan(spearman(x, np.ones(50)))
    with pytest.raises(ValueError, match="same length"):
        spearman(x, x[:3])


def _pooled_within_field_spearman(ds: PlantedDataset) -> float:
    """Spearman of (r, training frequency) over the seen values, ranks taken per field
    (so differences between fields' means do not count)."""
    freq = np.asarray(ds.encoder.frequencies, dtype=np.float64)
    field = np.asarray(ds.encoder.field_of_id)
    r = ds.planted_dims.numpy()
    ra, rb = [], []
    for f in np.unique(field):
        m = (field == f) & (r != NO_PLANTED_DIM) & (freq > 0)
        if m.sum() > 1:
            ra.append(rankdata(r[m]) / m.sum() - 0.5)
            rb.append(rankdata(freq[m]) / m.sum() - 0.5)
    a, b = np.concatenate(ra), np.concatenate(rb)
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_planted_dims_do_not_follow_frequency():
    # the "field" law: within a field r is independent of the value's frequency
    ds = load_dataset("planted", "ctr", num_rows=40_000, scale=0.005, dim=16, seed=0)
    assert abs(_pooled_within_field_spearman(ds)) < 0.05
    # the same statistic sees a planted dependence: r = the frequency rank within field
    tied = load_dataset("planted", "ctr", num_rows=40_000, scale=0.005, dim=16, seed=0)
    tied.planted_dims = torch.from_numpy(np.asarray(ds.encoder.frequencies)).clamp(max=16)
    assert _pooled_within_field_spearman(tied) > 0.5
    # the "hump" law: mid-frequency blocks hold more dims than the head and the tail
    hump = load_dataset("planted", "ctr", num_rows=40_000, scale=0.005, dim=16, dims_law="hump")
    r = hump.planted_dims.numpy().astype(np.float64)
    blocks = np.array_split(np.arange(len(r)), 10)
    means = [r[b][r[b] >= 0].mean() for b in blocks]
    assert max(means[2:8]) > means[0] + 2 and max(means[2:8]) > means[-1] + 2


def test_labels_carry_signal():
    ds = load_dataset("planted", "ctr", num_rows=30_000, scale=0.001, dim=8, seed=0)
    torch.manual_seed(0)
    model = build_model("fm", ds.num_features, ds.num_fields, 8)
    fit(model, ds, TrainConfig(epochs=3, lr=3e-3, batch_size=512), log=lambda _: None)
    with torch.no_grad():
        scores = model(ds.test.ids.long())
    base = ds.train.labels.mean().clamp(1e-6, 1 - 1e-6)
    base_logloss = logloss(torch.full_like(scores, float(torch.logit(base))), ds.test.labels)
    assert auc(scores, ds.test.labels) > 0.6
    assert logloss(scores, ds.test.labels) < base_logloss


def test_registry_round_trip():
    assert "planted" in DATASETS
    with pytest.raises(ValueError, match="needs no fetch"):
        fetch_dataset("planted")
    with pytest.raises(ValueError, match="task must be 'ctr'"):
        load_dataset("planted", "rating", **TINY)
    with pytest.raises(ValueError, match="basis must be one of"):
        load_dataset("planted", "ctr", **TINY, basis="diagonal")
    ds = load_dataset("planted", "ctr", **TINY, seed=2)
    assert isinstance(ds, PlantedDataset) and ds.num_fields == 26
    assert np.all(np.diff(ds.encoder.frequencies) <= 0)  # frequency-ordered ids
    assert ds.planted_dims.shape == (ds.num_features,) and ds.planted_dims.dtype == torch.int64
    again = load_dataset("planted", "ctr", **TINY, seed=2)
    assert torch.equal(again.test.ids, ds.test.ids) and torch.equal(
        again.planted_dims, ds.planted_dims
    )
    # every id maps back to its raw value's planted r; OOV ids carry none
    data = make_planted(**TINY, seed=2)
    index = [{v: i for i, v in enumerate(vals.tolist())} for vals in data.values]
    oov = {ds.encoder.oov_id(name) for name in data.field_names}
    for gid in range(ds.num_features):
        name, raw = ds.encoder.decode(gid)
        want = (
            NO_PLANTED_DIM
            if gid in oov
            else data.dims[int(name[1:]) - 1][index[int(name[1:]) - 1][raw]]
        )
        assert int(ds.planted_dims[gid]) == want


def test_recovery_scores_an_allocation():
    ds = load_dataset("planted", "ctr", num_rows=40_000, scale=0.005, dim=16, dims_law="hump")
    freq = ds.encoder.frequencies
    boundaries = np.linspace(0, ds.num_features, 11).astype(int)
    exact = recovery(ds.planted_dims.clamp(min=0), ds.planted_dims, freq, boundaries)
    assert exact["block"] == pytest.approx(1.0) and exact["feature"] == pytest.approx(1.0)
    assert exact["features"] == int(((ds.planted_dims >= 0) & (torch.as_tensor(freq) >= 20)).sum())
    by_freq = recovery(np.log1p(freq), ds.planted_dims, freq, boundaries)
    assert by_freq["feature_vs_frequency"] == pytest.approx(1.0)
    assert by_freq["block"] < 0.5  # a frequency law misses the hump
    with pytest.raises(ValueError, match="must all be"):
        recovery(freq[:3], ds.planted_dims, freq, boundaries)
