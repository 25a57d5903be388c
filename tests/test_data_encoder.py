"""FeatureEncoder: one id space by descending training frequency, OOV per field, numerics."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from mixemb.data import FeatureEncoder, FieldSpec


def _cols(**kw):
    return {k: np.array(v) for k, v in kw.items()}


def test_ids_follow_descending_frequency_across_fields():
    train = _cols(user=["a", "a", "a", "b", "b", "c"], item=["x", "y", "x", "x", "x", "z"])
    enc = FeatureEncoder([FieldSpec("user"), FieldSpec("item")]).fit([train])
    # counts: item x 4, user a 3, user b 2, then c, y, z once each; two OOVs with 0.
    assert enc.id_of("item", "x") == 0 and enc.id_of("user", "a") == 1
    assert enc.id_of("user", "b") == 2
    # ties (count 1) by field order then value: user c, item y, item z
    assert [enc.id_of("user", "c"), enc.id_of("item", "y"), enc.id_of("item", "z")] == [3, 4, 5]
    assert enc.frequencies.tolist() == [4, 3, 2, 1, 1, 1, 0, 0]
    assert enc.num_features == 8
    assert enc.field_of_id.tolist() == [1, 0, 0, 0, 1, 1, 0, 1]
    assert enc.decode(0) == ("item", "x") and enc.decode(enc.oov_id("user")) == ("user", None)


def test_transform_maps_unseen_and_missing_to_the_field_oov():
    enc = FeatureEncoder([FieldSpec("user"), FieldSpec("item")]).fit(
        [_cols(user=["a", "b"], item=["x", "x"])]
    )
    ids, values = enc.transform(_cols(user=["a", "zzz", ""], item=["x", "new", "x"]))
    assert values is None and ids.dtype == np.int32
    assert ids[:, 0].tolist() == [enc.id_of("user", "a"), enc.oov_id("user"), enc.oov_id("user")]
    assert ids[1, 1] == enc.oov_id("item") != enc.oov_id("user")


def test_min_count_sends_rare_values_to_oov_with_their_count():
    train = _cols(user=["a"] * 5 + ["b", "c", "d"])
    enc = FeatureEncoder([FieldSpec("user")], min_count=2).fit([train])
    assert enc.num_features == 2  # "a" and the OOV holding b, c, d
    assert enc.id_of("user", "b") == enc.oov_id("user") == 1
    assert enc.frequencies.tolist() == [5, 3]


def test_fit_over_chunks_equals_fit_at_once():
    rng = np.random.default_rng(0)
    vals = rng.integers(0, 50, 1000).astype(str)
    one = FeatureEncoder([FieldSpec("f")]).fit([_cols(f=vals)])
    many = FeatureEncoder([FieldSpec("f")]).fit(
        [_cols(f=vals[i : i + 77]) for i in range(0, 1000, 77)]
    )
    assert one.frequencies.tolist() == many.frequencies.tolist()
    assert np.array_equal(one.transform(_cols(f=vals))[0], many.transform(_cols(f=vals))[0])


def test_numeric_scale_multiplies_and_bucketize_categorizes():
    x = np.array([0.0, 1.0, 2.0, 3.0, math.nan, 100.0])
    cols = {"n": x, "c": np.array(["a"] * 6)}
    fields = [FieldSpec("n", "numeric"), FieldSpec("c")]
    enc = FeatureEncoder(fields, numeric_mode="scale").fit([cols])
    ids, values = enc.transform(cols)
    assert len(set(ids[:, 0].tolist())) == 1  # one id for the whole field
    expected = [0.0, 1.0, 2.0, math.log(3) ** 2, 0.0, math.log(100) ** 2]
    np.testing.assert_allclose(values[:, 0], expected, rtol=1e-6)
    assert values[:, 1].tolist() == [1.0] * 6
    assert enc.frequencies[enc.id_of("n", 1.0)] == 5  # non-missing rows
    enc_b = FeatureEncoder(fields, numeric_mode="bucketize").fit([cols])
    ids_b, values_b = enc_b.transform(cols)
    assert values_b is None
    # buckets: 0, 1, 2, floor(log(3)^2)=1, missing->OOV, floor(log(100)^2)=21
    assert ids_b[1, 0] == ids_b[3, 0] and ids_b[0, 0] != ids_b[1, 0]
    assert ids_b[4, 0] == enc_b.oov_id("n")


def test_state_round_trip_weights_only():
    train = _cols(user=["a", "a", "b"], item=["x", "y", "y"])
    enc = FeatureEncoder([FieldSpec("user"), FieldSpec("item")], min_count=1).fit([train])
    buf = io.BytesIO()
    torch.save(enc.state_dict(), buf)
    buf.seek(0)
    back = FeatureEncoder.from_state_dict(torch.load(buf, weights_only=True))
    probe = _cols(user=["a", "b", "q"], item=["y", "x", "x"])
    assert np.array_equal(back.transform(probe)[0], enc.transform(probe)[0])
    assert back.frequencies.tolist() == enc.frequencies.tolist()


def test_bad_arguments():
    with pytest.raises(ValueError, match="numeric_mode"):
        FeatureEncoder([FieldSpec("a")], numeric_mode="log")
    with pytest.raises(ValueError, match="min_count"):
        FeatureEncoder([FieldSpec("a")], min_count=0)
    with pytest.raises(RuntimeError, match="before fit"):
        FeatureEncoder([FieldSpec("a")]).transform(_cols(a=["x"]))


def test_per_field_oov_ids_are_sorted_in_by_frequency():
    train = _cols(user=["a", "a", "a", "r", "s", ""], item=["x", "x", "y", "y", "z", "z"])
    enc = FeatureEncoder([FieldSpec("user"), FieldSpec("item")], min_count=2).fit([train])
    # user OOV holds r, s and the missing value (3 lookups); item x/y/z have 2 each;
    # the item OOV was never used: count 0, last.
    assert enc.frequencies.tolist() == [3, 3, 2, 2, 2, 0]
    assert enc.id_of("user", "a") == 0 and enc.oov_id("user") == 1  # a before OOV in a tie
    assert [enc.id_of("item", v) for v in "xyz"] == [2, 3, 4] and enc.oov_id("item") == 5
    ids, _ = enc.transform(train)
    counts = np.bincount(ids.reshape(-1), minlength=enc.num_features)
    assert counts.tolist() == enc.frequencies.tolist()
    unseen = FeatureEncoder([FieldSpec("user"), FieldSpec("item")]).fit(
        [_cols(user=["a"], item=["x"])]
    )
    # both OOVs unused in training: count 0, last, user's first
    assert unseen.frequencies.tolist() == [1, 1, 0, 0]
    assert [unseen.oov_id("user"), unseen.oov_id("item")] == [2, 3]


def test_ties_do_not_depend_on_row_order():
    vals = np.array(["q", "b", "m", "a", "z", "c"])
    one = FeatureEncoder([FieldSpec("f")]).fit([_cols(f=vals)])
    two = FeatureEncoder([FieldSpec("f")]).fit([_cols(f=vals[::-1])])
    assert [one.decode(i)[1] for i in range(6)] == ["a", "b", "c", "m", "q", "z"]
    assert [two.decode(i)[1] for i in range(6)] == ["a", "b", "c", "m", "q", "z"]


def test_transform_accepts_unicode_object_and_number_columns():
    enc = FeatureEncoder([FieldSpec("f")]).fit([_cols(f=["1", "2", "2"])])
    want = [enc.id_of("f", "2"), enc.id_of("f", "1")]
    assert enc.transform({"f": np.array(["2", "1"])})[0][:, 0].tolist() == want
    assert enc.transform({"f": np.array(["2", "1"], dtype=object)})[0][:, 0].tolist() == want
    assert enc.transform({"f": np.array([2, 1])})[0][:, 0].tolist() == want
    assert enc.id_of("f", 2) == enc.id_of("f", "2") == 0
    with pytest.raises(Exception, match="missing column 'f'"):
        enc.transform({"g": np.array(["1"])})


def test_bucket_labels_follow_the_criteo_rule():
    from mixemb.data.encoder import bucket_labels

    x = np.array([-1.0, 0.0, 1.5, 2.0, 3.0, 10.0, 1000.0, math.nan])
    expected = ["-1", "0", "1", "2", "1", "5", "47", ""]
    assert bucket_labels(x).tolist() == expected
    enc = FeatureEncoder([FieldSpec("n", "numeric")], numeric_mode="bucketize").fit(
        [{"n": np.array([10.0, 12.0, 3.0, math.nan])}]
    )
    assert enc.decode(enc.id_of("n", 10.0)) == ("n", "5")
    assert enc.decode(enc.id_of("n", 12.0)) == ("n", "6")  # floor(log(12)^2) = 6
    assert enc.id_of("n", math.nan) == enc.oov_id("n")  # missing
    assert enc.id_of("n", 99999.0) == enc.oov_id("n")  # bucket 132 unseen in training


def test_state_dict_types_and_file_round_trip(tmp_path):
    x = np.array([1.0, 5.0, math.nan, 50.0])
    cols = {"n": x, "c": np.array(["a", "b", "a", ""], dtype=object)}
    enc = FeatureEncoder([FieldSpec("c"), FieldSpec("n", "numeric")], min_count=2).fit([cols])
    state = enc.state_dict()
    assert torch.as_tensor(state["frequencies"]).dtype == torch.int64
    torch.save(state, tmp_path / "enc.pt")
    back = FeatureEncoder.from_state_dict(torch.load(tmp_path / "enc.pt", weights_only=True))
    for a, b in zip(back.transform(cols), enc.transform(cols)):
        assert np.array_equal(a, b)
    assert back.min_count == 2 and back.numeric_mode == "scale"
    assert [back.decode(i) for i in range(back.num_features)] == [
        enc.decode(i) for i in range(enc.num_features)
    ]
    assert back.field_of_id.tolist() == enc.field_of_id.tolist()


def test_vocab_lists_kept_values_in_id_order():
    train = _cols(user=["a", "a", "b", "c"], item=["x", "y", "y", "y"])
    enc = FeatureEncoder([FieldSpec("user"), FieldSpec("item")], min_count=2).fit([train])
    assert enc.vocab("item") == {"y": 0} and enc.vocab("user") == {"a": 1}
    assert enc.oov_id("item") not in enc.vocab("item").values()
    with pytest.raises(KeyError, match="no field 'genre'"):
        enc.vocab("genre")
    num = FeatureEncoder([FieldSpec("n", "numeric")], numeric_mode="bucketize").fit(
        [{"n": np.array([1.0, 1.0, 10.0])}]
    )
    assert list(num.vocab("n")) == ["1", "5"]
    scaled = FeatureEncoder([FieldSpec("n", "numeric")]).fit([{"n": np.array([1.0])}])
    assert scaled.vocab("n") == {} and scaled.num_features == 1


def test_encoding_a_million_rows_is_fast():
    import time

    rng = np.random.default_rng(0)
    cols = {
        "user": rng.integers(0, 6000, 1_000_000).astype(str).astype(object),
        "item": rng.integers(0, 3700, 1_000_000).astype(str).astype(object),
    }
    t0 = time.perf_counter()
    enc = FeatureEncoder([FieldSpec("user"), FieldSpec("item")]).fit([cols])
    ids, _ = enc.transform(cols)
    assert time.perf_counter() - t0 < 5.0  # about 0.5 s on 2 slow cores
    counts = np.bincount(ids.reshape(-1), minlength=enc.num_features)
    assert counts.tolist() == enc.frequencies.tolist()
