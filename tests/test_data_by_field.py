"""Ids renumbered field by field: the same rows, α blocks that never mix fields."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mixemb.data import FeatureEncoder, load_dataset, recovery
from mixemb.methods import MethodConfig
from mixemb.methods.blocks import block_sizes
from mixemb.nn import make_boundaries
from mixemb.search import build_search_model

TINY = dict(num_rows=4000, scale=0.001, dim=8, seed=3)


@pytest.fixture(scope="module")
def pair():
    return load_dataset("planted", "ctr", **TINY), load_dataset(
        "planted", "ctr", **TINY, id_order="field"
    )


def test_same_rows_new_ids(pair):
    a, b = pair
    _, new_of_old = a.encoder.by_field()
    remap = torch.from_numpy(new_of_old)
    for sa, sb in ((a.train, b.train), (a.valid, b.valid), (a.test, b.test)):
        assert sb.ids.dtype == sa.ids.dtype == torch.int32
        assert torch.equal(sb.ids.long(), remap[sa.ids.long()])
        assert torch.equal(sb.labels, sa.labels)
    assert sorted(new_of_old.tolist()) == list(range(a.num_features))
    # every id decodes to the same (field, raw value) through either encoder
    for old in range(a.num_features):
        assert b.encoder.decode(int(new_of_old[old])) == a.encoder.decode(old)
    assert torch.equal(b.planted_dims[remap], a.planted_dims)
    assert b.encoder.id_order == "field" and a.encoder.id_order == "frequency"


def test_fields_contiguous_frequency_sorted_within(pair):
    _, b = pair
    enc = b.encoder
    assert np.all(np.diff(enc.field_of_id) >= 0)
    for f in range(b.num_fields):
        assert np.all(np.diff(enc.frequencies[enc.field_of_id == f]) <= 0)
    # frequencies still count the training lookups per id
    counts = np.bincount(b.train.ids.reshape(-1).numpy(), minlength=b.num_features)
    np.testing.assert_array_equal(counts, enc.frequencies)


def test_encoder_round_trip_keeps_the_order(pair):
    _, b = pair
    again = FeatureEncoder.from_state_dict(b.encoder.state_dict())
    assert again.id_order == "field"
    np.testing.assert_array_equal(again.field_of_id, b.encoder.field_of_id)
    for field in ("C1", "C26"):
        assert again.vocab(field) == b.encoder.vocab(field)
        assert again.oov_id(field) == b.encoder.oov_id(field)
    state = b.encoder.state_dict()
    del state["id_order"]  # a state written without the key reads as frequency order
    assert FeatureEncoder.from_state_dict(state).id_order == "frequency"
    with pytest.raises(ValueError, match="id_order must be one of"):
        FeatureEncoder.from_state_dict({**b.encoder.state_dict(), "id_order": "random"})


@pytest.mark.parametrize("num_blocks", [1, 3, 10])
def test_block_boundaries_per_field(pair, num_blocks):
    a, b = pair
    # frequency order: the equal blocks over all ids it always had
    assert torch.equal(
        a.block_boundaries(num_blocks), make_boundaries(a.num_features, num_blocks=num_blocks)
    )
    bounds = b.block_boundaries(num_blocks)
    fields = torch.as_tensor(b.encoder.field_of_id)
    sizes = torch.bincount(fields, minlength=b.num_fields)
    assert bounds[0] == 0 and bounds[-1] == b.num_features
    assert torch.all(bounds[1:] > bounds[:-1])
    assert len(bounds) - 1 == int(torch.clamp(sizes, max=num_blocks).sum())
    for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        assert fields[lo] == fields[hi - 1]  # a block never mixes fields
    with pytest.raises(ValueError, match="num_blocks must be >= 1"):
        b.block_boundaries(0)


def test_methods_and_search_use_the_field_blocks(pair):
    _, b = pair
    cfg = MethodConfig(dim=8, num_blocks=2)
    boundaries, sizes = block_sizes(b, cfg)
    assert torch.equal(boundaries, b.block_boundaries(2)) and sum(sizes) == b.num_features
    model = build_search_model(b, "fm", cfg.search_config(0))
    assert torch.equal(model.embedding.boundaries.cpu(), boundaries)
    assert model.embedding.alpha.shape == (len(sizes), 8)


def test_recovery_per_field(pair):
    _, b = pair
    planted = b.planted_dims
    freq, fields = b.encoder.frequencies, b.encoder.field_of_id
    bounds = b.block_boundaries(2)
    exact = recovery(planted.clamp(min=0), planted, freq, bounds, field_of_id=fields)
    assert exact["field"] == pytest.approx(1.0) and exact["block"] == pytest.approx(1.0)
    has = planted.numpy() >= 0
    assert len(exact["field_mean_planted"]) == len(np.unique(fields[has]))
    reversed_ = recovery(-planted.double(), planted, freq, bounds, field_of_id=fields)
    assert reversed_["field"] == pytest.approx(-1.0)
    assert "field" not in recovery(planted.clamp(min=0), planted, freq, bounds)
    with pytest.raises(ValueError, match="field_of_id must be"):
        recovery(planted.clamp(min=0), planted, freq, bounds, field_of_id=fields[:3])


def test_id_order_is_checked():
    with pytest.raises(ValueError, match="id_order must be one of"):
        load_dataset("planted", "ctr", **TINY, id_order="alphabet")
