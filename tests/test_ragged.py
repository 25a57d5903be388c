"""RaggedTable format: exact round trip, gathers equal the dense pruned table, honest bytes;
the ragged references (mixemb.reference) and RaggedEmbedding."""

from __future__ import annotations

import io

import pytest
import torch

from mixemb.ragged import RaggedTable, popcount64
from mixemb.reference import (
    ragged_bag_reference,
    ragged_dot_reference,
    ragged_gather_reference,
)


def _pruned(n, k, keep_prob, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, k, generator=g).to(dtype)
    x[torch.rand(n, k, generator=g) > keep_prob] = 0
    return x


SHAPES = [(1, 1), (7, 1), (20, 7), (33, 64), (17, 65), (9, 160), (0, 8)]


@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("group_size", [1, 4, 16])
def test_round_trip_and_gather(n, k, group_size):
    x = _pruned(n, k, 0.3, seed=n * k)
    if n > 2:
        x[1] = 0  # a row with zero kept dims
        x[2] = torch.randn(k).abs() + 0.1  # an all-kept row
    table = RaggedTable.from_dense(x, group_size=group_size)
    assert table.nnz == int((x != 0).sum())
    assert torch.equal(table.to_dense(), x)
    assert torch.equal(table.row_dims(), (x != 0).sum(1))
    if n:
        every_row = torch.arange(n)
        assert torch.equal(ragged_gather_reference(table, every_row), x)
        ids = torch.randint(0, n, (5, 3))
        ids[0, :] = 0  # duplicates
        assert torch.equal(ragged_gather_reference(table, ids), x[ids])
        assert torch.equal(ragged_gather_reference(table, ids.int()), x[ids])
    empty = ragged_gather_reference(table, torch.empty(0, 3, dtype=torch.long))
    assert empty.shape == (0, 3, k)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_values(dtype):
    x = _pruned(30, 12, 0.4)
    table = RaggedTable.from_dense(x, dtype=dtype)
    assert table.values.dtype == dtype
    assert torch.equal(table.to_dense(), x.to(dtype))


def test_nbytes_counts_every_tensor_and_metadata_is_small():
    x = _pruned(1600, 64, 0.05)
    table = RaggedTable.from_dense(x)
    expected = table.masks.numel() * 8 + table.group_offsets.numel() * 8 + table.nnz * 4
    assert table.nbytes() == expected
    metadata_per_row = (table.nbytes() - table.nnz * 4) / 1600
    assert metadata_per_row <= 8.51  # 8 B mask + 8 B per 16 rows


def test_state_dict_loads_weights_only():
    table = RaggedTable.from_dense(_pruned(40, 9, 0.5))
    buf = io.BytesIO()
    torch.save(table.state_dict(), buf)
    buf.seek(0)
    loaded = RaggedTable.from_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(loaded.to_dense(), table.to_dense())


def test_tampered_tables_are_rejected():
    table = RaggedTable.from_dense(_pruned(40, 9, 0.5))
    state = table.state_dict()
    with pytest.raises(ValueError, match="stored"):
        RaggedTable.from_state_dict({**state, "values": state["values"][:-1]})
    offsets = state["group_offsets"].clone()
    offsets[1] += 1
    with pytest.raises(ValueError, match="group_offsets"):
        RaggedTable.from_state_dict({**state, "group_offsets": offsets})
    with pytest.raises(ValueError, match="version"):
        RaggedTable.from_state_dict({**state, "format_version": 99})


def test_out_of_range_id_is_named():
    table = RaggedTable.from_dense(_pruned(5, 4, 0.5))
    with pytest.raises(IndexError, match="id 5 out of range"):
        ragged_gather_reference(table, torch.tensor([0, 5]))


def test_popcount_matches_bit_count_including_sign_bit():
    x = torch.tensor([0, 1, -1, 2**62, -(2**63), 0x0F0F, 123456789123456789, -5])
    expected = [bin(v & (2**64 - 1)).count("1") for v in x.tolist()]
    assert popcount64(x).tolist() == expected


def test_row_offsets_match_exclusive_prefix_sum():
    x = _pruned(50, 70, 0.3)
    table = RaggedTable.from_dense(x, group_size=8)
    dims = (x != 0).sum(1)
    assert torch.equal(table.row_offsets(), dims.cumsum(0) - dims)


def test_ragged_embedding_module_serves_a_model():
    from mixemb.models import build_model
    from mixemb.nn import RaggedEmbedding

    x = _pruned(30, 8, 0.4)
    emb = RaggedEmbedding.from_dense(x)
    assert emb.nbytes() == emb.table.nbytes()
    ids = torch.randint(0, 30, (6, 2))
    assert torch.equal(emb(ids), x[ids])
    model = build_model("mf", 30, 2, 8, embedding=emb)
    assert model(ids).shape == (6,)
    assert "nnz=" in repr(emb)


def test_ragged_embedding_passes_its_kernel_variant_to_every_gather(monkeypatch):
    """The CUDA kernel variant is chosen at construction and reaches the op (the CPU
    kernels check and ignore it, so the rows are the same)."""
    import mixemb.nn.ragged as module
    from mixemb.nn import RaggedEmbedding

    x = _pruned(30, 8, 0.4)
    emb = RaggedEmbedding.from_dense(x, group_size=4, one_warp=True, lookups_at_once=2)
    assert emb.group_size == 4 and "one_warp=True, lookups_at_once=2" in repr(emb)
    seen = []
    gather = module.ragged_gather
    monkeypatch.setattr(
        module, "ragged_gather", lambda *a, **kw: seen.append(kw) or gather(*a, **kw)
    )
    ids = torch.randint(0, 30, (6, 2))
    assert torch.equal(emb(ids), x[ids])
    assert seen[0]["one_warp"] is True and seen[0]["lookups_at_once"] == 2
    with pytest.raises(ValueError, match="lookups_at_once must be 1, 2, 4 or 8"):
        RaggedEmbedding.from_dense(x, lookups_at_once=3)


@pytest.mark.parametrize("mode", ["sum", "mean"])
@pytest.mark.parametrize("include_last", [False, True])
def test_bag_matches_embedding_bag(mode, include_last):
    x = _pruned(25, 7, 0.4)
    ids = torch.tensor([3, 3, 0, 24, 5, 1, 1, 1])
    offsets = torch.tensor([0, 2, 2, 5])  # bag 1 is empty
    if include_last:
        offsets = torch.cat([offsets, torch.tensor([len(ids)])])
    got = ragged_bag_reference(
        RaggedTable.from_dense(x), ids, offsets, mode=mode, include_last_offset=include_last
    )
    ref = torch.nn.functional.embedding_bag(
        ids, x, offsets, mode=mode, include_last_offset=include_last
    )
    torch.testing.assert_close(got, ref)


def test_bag_per_sample_weights_and_gradcheck():
    x = _pruned(10, 5, 0.5, dtype=torch.float64)
    table = RaggedTable.from_dense(x)
    ids, offsets = torch.tensor([1, 2, 2, 9]), torch.tensor([0, 1])
    w = torch.rand(4, dtype=torch.float64, requires_grad=True)
    ref = torch.nn.functional.embedding_bag(ids, x, offsets, mode="sum", per_sample_weights=w)
    torch.testing.assert_close(ragged_bag_reference(table, ids, offsets, per_sample_weights=w), ref)
    assert torch.autograd.gradcheck(
        lambda w: ragged_bag_reference(table, ids, offsets, per_sample_weights=w), (w,)
    )
    with pytest.raises(ValueError, match="per_sample_weights"):
        ragged_bag_reference(table, ids, offsets, mode="mean", per_sample_weights=w)
    with pytest.raises(ValueError, match="start at 0"):
        ragged_bag_reference(table, ids, torch.tensor([1, 2]))


def test_dot_over_shared_kept_dims():
    a, b = _pruned(12, 9, 0.5, seed=1), _pruned(8, 9, 0.5, seed=2)
    ia, ib = torch.tensor([0, 11, 3, 3]), torch.tensor([7, 0, 3, 3])
    got = ragged_dot_reference(RaggedTable.from_dense(a), ia, RaggedTable.from_dense(b), ib)
    torch.testing.assert_close(got, (a[ia] * b[ib]).sum(-1))
    with pytest.raises(ValueError, match="dims differ"):
        ragged_dot_reference(RaggedTable.from_dense(a), ia, RaggedTable.from_dense(b[:, :4]), ib)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_from_dense_rejects_non_finite_values(bad):
    x = _pruned(6, 5, 0.8)
    x[4, 2] = bad
    with pytest.raises(ValueError, match=f"pruned holds {bad}"):
        RaggedTable.from_dense(x)
    big = torch.zeros(2, 3, dtype=torch.float64)
    big[1, 1] = 1e300  # finite in float64, inf once cast
    with pytest.raises(ValueError, match="cast to torch.float16 holds inf"):
        RaggedTable.from_dense(big, dtype=torch.float16)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.uint8])
def test_from_dense_rejects_non_float_tables_and_dtypes(dtype):
    with pytest.raises(ValueError, match=f"pruned must be a float tensor .* got {dtype}"):
        RaggedTable.from_dense(torch.ones(3, 4, dtype=dtype))
    with pytest.raises(ValueError, match=f"dtype must be one of .* got {dtype}"):
        RaggedTable.from_dense(torch.ones(3, 4), dtype=dtype)


@pytest.mark.parametrize(
    "name,dtype", [("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)]
)
def test_from_dense_takes_value_dtype_names(name, dtype):
    x = _pruned(20, 7, 0.5)
    assert RaggedTable.from_dense(x, dtype=name).values.dtype == dtype
    with pytest.raises(
        ValueError, match="value_dtype must be one of fp32, fp16, bf16 here, got 'fp8'"
    ):
        RaggedTable.from_dense(x, dtype="fp8")


def test_loaded_state_is_validated_in_full():
    """What RaggedTable.from_state_dict (a model file from anywhere) rejects before any op
    sees it, each with a one-line ValueError naming the problem."""
    state = RaggedTable.from_dense(_pruned(40, 9, 0.5)).state_dict()
    masks_high = state["masks"].clone()
    masks_high[7] |= 1 << 9  # dim 9 of a 9-dim table
    offsets = state["group_offsets"].clone()
    offsets[1], offsets[2] = offsets[2], offsets[1]  # not monotone
    values = state["values"].clone()
    values[3] = float("nan")
    bad = {
        "masks of row 7 keep dims at or past embedding_dim=9": {"masks": masks_high},
        "group_offsets do not match": {"group_offsets": offsets},
        "values holds nan at position 3": {"values": values},
        "values must be .* got .* torch.int64": {"values": state["values"].long()},
        "masks must be a tensor": {"masks": [1, 2]},
        "embedding_dim must be an int": {"embedding_dim": 9.0},
        "group_size must be >= 1": {"group_size": 0},
        "lacks \\['values'\\]": {"values": None},
    }
    for message, change in bad.items():
        corrupt = {**state, **change}
        corrupt = {k: v for k, v in corrupt.items() if v is not None}
        with pytest.raises(ValueError, match=message):
            RaggedTable.from_state_dict(corrupt)
    with pytest.raises(ValueError, match="must be a dict"):
        RaggedTable.from_state_dict([state])


# ---- int8 tables: uint8 codes with a per-row fp16 scale and bias (mixemb.quant) ----------
def test_int8_table_round_trips_through_quant_and_counts_its_bytes():
    from mixemb.prune.budget import ragged_metadata_bytes
    from mixemb.quant import INT8_ROW_BYTES, dequantize_segments_int8, quantize_segments_int8

    x = _pruned(33, 70, 0.3, seed=5)
    x[1] = 0  # a row with no kept value: scale 0, bias 0
    table = RaggedTable.from_dense(x, dtype="int8")
    present = x != 0
    q, scale_bias = quantize_segments_int8(x[present], present.sum(1))
    assert table.values.dtype == torch.uint8 and torch.equal(table.values, q)
    assert torch.equal(table.scale_bias, scale_bias) and table.scale_bias[1].eq(0).all()
    served = torch.zeros_like(x)
    served[present] = dequantize_segments_int8(q, present.sum(1), scale_bias)
    assert torch.equal(table.to_dense(), served)
    assert (table.to_dense() - x).abs().max() <= table.scale_bias[:, 0].float().max() / 2
    assert table.nbytes() == table.nnz + INT8_ROW_BYTES * 33 + ragged_metadata_bytes(33, 70)
    assert table.value_format == "int8" and "dtype=int8" in repr(table)
    ids = torch.tensor([0, 1, 32, 5, 5])
    assert torch.equal(ragged_gather_reference(table, ids), served[ids])


def test_int8_state_dict_round_trip_and_old_states_load():
    x = _pruned(20, 9, 0.5, seed=1)
    table = RaggedTable.from_dense(x, dtype="int8")
    buf = io.BytesIO()
    torch.save(table.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert state["value_format"] == "int8"
    loaded = RaggedTable.from_state_dict(state)
    assert torch.equal(loaded.to_dense(), table.to_dense())
    # a float table's state written before value_format existed still loads as a float table
    old = RaggedTable.from_dense(x).state_dict()
    assert old.pop("value_format") == "float"
    assert torch.equal(RaggedTable.from_state_dict(old).to_dense(), x)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.__setitem__("scale_bias", s["scale_bias"][:-1]), r"scale_bias must be \(20"),
        (lambda s: s.__setitem__("scale_bias", s["scale_bias"].float()), "float16"),
        (lambda s: s["scale_bias"].__setitem__((3, 0), float("nan")), "scale_bias holds nan"),
        (lambda s: s["scale_bias"].__setitem__((4, 1), float("inf")), "scale_bias holds inf"),
        (lambda s: s.pop("scale_bias"), "'int8' must hold a scale_bias"),
        (lambda s: s.__setitem__("value_format", "float"), "'float' must not hold"),
        (lambda s: s.__setitem__("value_format", "int4"), "value_format must be one of"),
        (lambda s: s.__setitem__("values", s["values"].float()), "values must be .* uint8"),
    ],
)
def test_corrupt_int8_states_are_rejected(edit, message):
    state = RaggedTable.from_dense(_pruned(20, 9, 0.5, seed=1), dtype="int8").state_dict()
    edit(state)
    with pytest.raises(ValueError, match=message):
        RaggedTable.from_state_dict(state)


def test_from_dense_int8_rejects_non_finite_values_and_unknown_dtypes():
    x = _pruned(5, 4, 1.0)
    x[2, 1] = float("inf")
    with pytest.raises(ValueError, match="pruned holds inf"):
        RaggedTable.from_dense(x, dtype="int8")
    with pytest.raises(ValueError, match="dtype must be one of"):
        RaggedTable.from_dense(_pruned(5, 4, 1.0), dtype="int4")


def test_ragged_embedding_serves_and_reloads_an_int8_table():
    from mixemb.models import build_model
    from mixemb.nn import RaggedEmbedding

    x = _pruned(50, 16, 0.4, seed=2)
    emb = RaggedEmbedding.from_dense(x, dtype="int8")
    assert "dtype=int8" in repr(emb) and emb.nbytes() == emb.table.nbytes()
    ids = torch.randint(0, 50, (8, 3))
    assert torch.equal(emb(ids), emb.table.to_dense()[ids])
    model = build_model("deepfm", 50, 3, 16, embedding=emb, hidden=[8]).eval()
    other = build_model(
        "deepfm", 50, 3, 16, embedding=RaggedEmbedding.from_dense(x * 2, dtype="int8"), hidden=[8]
    ).eval()
    other.load_state_dict(model.state_dict())
    assert torch.equal(other(ids), model(ids))
    state = model.state_dict()
    state["embedding.scale_bias"] = state["embedding.scale_bias"][:, :1].repeat(1, 2) * 0 - 1
    state["embedding.scale_bias"][0, 0] = float("nan")
    with pytest.raises(ValueError, match="invalid ragged table.*scale_bias holds nan"):
        other.load_state_dict(state)


def test_pruned_model_with_an_int8_table_saves_reloads_and_scores_identically(tmp_path):
    from mixemb.models import build_model
    from mixemb.nn import SoftSelectEmbedding, make_boundaries
    from mixemb.prune import load_pruned, merge_and_prune, save_pruned, to_ragged_model

    torch.manual_seed(0)
    emb = SoftSelectEmbedding(40, 12, make_boundaries(40, num_blocks=4))
    model = build_model("mf", 40, 2, 12, embedding=emb).eval()
    pruned, _ = merge_and_prune(model.embedding, ratio=0.3)
    serving = to_ragged_model(model, pruned, value_dtype="int8")
    assert serving.embedding.table.value_format == "int8"
    path = save_pruned(serving, tmp_path / "pruned.pt")
    loaded, _ = load_pruned(path)
    ids = torch.randint(0, 40, (64, 2))
    assert loaded.embedding.table.value_format == "int8"
    assert torch.equal(loaded(ids), serving(ids))
    fp32 = to_ragged_model(model, pruned)(ids)
    torch.testing.assert_close(serving(ids), fp32, rtol=0.02, atol=0.02 * fp32.abs().max().item())
