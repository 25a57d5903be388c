"""BlockTable: the stored format of a block-mask table (dense values per block, the L×K mask
bits, the boundaries), its bytes, its round trip and its checks of untrusted states."""

from __future__ import annotations

import io

import pytest
import torch

from mixemb.block_table import BlockTable, pack_mask, unpack_mask
from mixemb.prune.budget import block_tables_bytes
from mixemb.quant import round_segments

DTYPES = ["fp32", "fp16", "bf16", "int8"]
ROWS_DTYPES = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "int8": torch.float32,
}


def pruned_table(bounds, dims, k, seed=0):
    """(pruned (N, K) float32, boundaries (L+1,), block_mask (L, K)): block l keeps dims[l]
    random columns, random values on them."""
    g = torch.Generator().manual_seed(seed)
    boundaries = torch.tensor(bounds)
    block_mask = torch.zeros(len(dims), k, dtype=torch.bool)
    for block, d in enumerate(dims):
        block_mask[block, torch.randperm(k, generator=g)[:d]] = True
    rows = torch.repeat_interleave(block_mask, boundaries.diff(), dim=0)
    return torch.randn(bounds[-1], k, generator=g) * rows, boundaries, block_mask


def table_of(value_dtype="fp32", bounds=(0, 3, 10, 20), dims=(4, 0, 5), k=5):
    return BlockTable.from_block_mask(*pruned_table(list(bounds), list(dims), k), value_dtype)


@pytest.mark.parametrize("value_dtype", DTYPES)
@pytest.mark.parametrize(
    "bounds, dims, k",
    [
        ((0, 3, 10, 20), (4, 0, 5), 5),
        ((0, 7), (24,), 24),
        ((0, 1, 2), (0, 9), 24),
        ((0, 1), (1,), 1),
    ],
    ids=["zero-column-block", "one-block-K24", "one-row-blocks", "K1"],
)
def test_it_stores_each_blocks_rows_as_a_masked_table_rounds_them_and_counts_the_budgets_bytes(
    value_dtype, bounds, dims, k
):
    pruned, boundaries, block_mask = pruned_table(list(bounds), list(dims), k)
    table = BlockTable.from_block_mask(pruned, boundaries, block_mask, value_dtype)
    rows = pruned != 0
    expected = pruned.clone()
    expected[rows] = round_segments(pruned[rows], rows.sum(1), value_dtype)
    assert table.rows_dtype == ROWS_DTYPES[value_dtype]
    torch.testing.assert_close(table.to_dense().float(), expected, rtol=0, atol=0)
    sizes = boundaries.diff().tolist()
    assert table.block_dims() == list(dims) and table.value_dtype == value_dtype
    assert table.nbytes() == block_tables_bytes(sizes, list(dims), value_dtype, mask_dim=k)
    for block, (size, d) in enumerate(zip(sizes, dims)):
        assert table.block_values(block).shape == (size, d)


def test_the_serving_index_places_every_blocks_values_and_int8_rows():
    table = table_of("int8", bounds=(0, 3, 10, 20), dims=(4, 0, 5))
    layout, rank = table.serving_index()
    # value starts 0, 3·4, 12 + 0; int8 rows start 0, 3, 3 (block 1 stores no row)
    assert layout.tolist() == [[0, 0, 4], [12, 3, 0], [12, 3, 5]]
    assert rank.dtype == torch.int32 and rank[1].tolist() == [-1] * 5
    assert rank[2].tolist() == [0, 1, 2, 3, 4]
    mask = table.block_mask()
    assert (rank[0] >= 0).tolist() == mask[0].tolist() and sorted(rank[0][mask[0]].tolist()) == [
        0, 1, 2, 3,
    ]  # fmt: skip


def test_mask_bits_pack_and_unpack():
    mask = torch.rand(3, 13, generator=torch.Generator().manual_seed(0)) < 0.5
    bits = pack_mask(mask)
    assert bits.shape == (3, 2) and bits.dtype == torch.uint8
    assert torch.equal(unpack_mask(bits, 13), mask)


@pytest.mark.parametrize("value_dtype", DTYPES)
def test_a_state_round_trips_through_a_weights_only_file(value_dtype):
    table = table_of(value_dtype)
    buf = io.BytesIO()
    torch.save(table.state_dict(), buf)
    buf.seek(0)
    loaded = BlockTable.from_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(loaded.to_dense(), table.to_dense()) and loaded.nbytes() == table.nbytes()
    assert repr(loaded) == repr(table)


def test_from_block_mask_rejects_values_outside_the_mask_and_bad_arguments():
    pruned, boundaries, block_mask = pruned_table([0, 3, 10, 20], [4, 0, 5], 5)
    pruned[5, 2] = 1.0  # block 1 keeps no column
    with pytest.raises(ValueError, match=r"pruned\[5, 2\] = 1.0 lies outside"):
        BlockTable.from_block_mask(pruned, boundaries, block_mask)
    pruned[5, 2] = 0.0
    with pytest.raises(ValueError, match="block_mask must be"):
        BlockTable.from_block_mask(pruned, boundaries, block_mask[:2])
    with pytest.raises(ValueError, match="from 0 to N=20"):
        BlockTable.from_block_mask(pruned, torch.tensor([0, 3, 10, 19]), block_mask)
    with pytest.raises(ValueError, match="value_dtype must be"):
        BlockTable.from_block_mask(pruned, boundaries, block_mask, "fp8")
    with pytest.raises(ValueError, match="int8 rows need finite"):
        nan = torch.where(pruned != 0, float("nan"), 0.0)
        BlockTable.from_block_mask(nan, boundaries, block_mask, "int8")
    with pytest.raises(ValueError, match="values holds -?inf"):
        BlockTable.from_block_mask(pruned * 1e6, boundaries, block_mask, "fp16")


def _edit(key, fn):
    def corrupt(state):
        state[key] = fn(state[key])

    return corrupt


def _drop(key):
    return lambda state: state.pop(key)


CORRUPTIONS = {
    "boundaries unsorted": (_edit("boundaries", lambda b: b[[0, 2, 1, 3]]), "strictly increasing"),
    "boundaries not from 0": (_edit("boundaries", lambda b: b + 1), "from 0"),
    "boundaries negative": (_edit("boundaries", lambda b: b - 30), "from 0"),
    "boundaries past the values": (_edit("boundaries", lambda b: b * 2), r"\(26, 2\) float16"),
    "boundaries float": (_edit("boundaries", lambda b: b.float()), "int64"),
    "boundaries 2-D": (_edit("boundaries", lambda b: b[None]), r"\(L\+1,\)"),
    "boundaries not a tensor": (_edit("boundaries", lambda b: b.tolist()), "must be a tensor"),
    "mask wrong shape": (_edit("mask_bits", lambda m: m[:2]), "mask_bits must be"),
    "mask wrong dtype": (_edit("mask_bits", lambda m: m.long()), "mask_bits must be"),
    "mask bit past K": (_edit("mask_bits", lambda m: m | 0x80), "past embedding_dim"),
    "values too short": (_edit("values", lambda v: v[:-1]), "keep 62 values but 61"),
    "values too long": (_edit("values", lambda v: torch.cat([v, v[:1]])), "but 63"),
    "values 2-D": (_edit("values", lambda v: v[None]), r"\(V,\)"),
    "values strided": (_edit("values", lambda v: v.repeat(2)[::2]), "contiguous"),
    "scale_bias wrong shape": (_edit("scale_bias", lambda s: s[:-1]), "scale_bias must be"),
    "scale_bias float32": (_edit("scale_bias", lambda s: s.float()), "scale_bias must be"),
    "scale_bias NaN": (_edit("scale_bias", lambda s: s * float("nan")), "scale_bias holds nan"),
    "scale_bias missing": (_drop("scale_bias"), "scale_bias exactly when int8"),
    "value_format float": (_edit("value_format", lambda f: "float"), "exactly when int8"),
    "value_format unknown": (_edit("value_format", lambda f: "int4"), "value_format must be"),
    "embedding_dim bool": (_edit("embedding_dim", lambda k: True), "embedding_dim must be"),
    "embedding_dim too small": (_edit("embedding_dim", lambda k: 4), "mask_bits must be|past"),
    "version": (_edit("format_version", lambda v: 2), "format version 2"),
    "no values": (_drop("values"), "lacks"),
}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_a_corrupted_int8_state_is_a_one_line_value_error(name):
    corrupt, message = CORRUPTIONS[name]
    state = table_of("int8").state_dict()
    corrupt(state)
    with pytest.raises(ValueError, match=message) as err:
        BlockTable.from_state_dict(state)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (_edit("values", lambda v: v.to(torch.uint8)), r"values must be \(V,\) of"),
        (_edit("values", lambda v: v.double()), r"values must be \(V,\) of"),
        (_edit("values", lambda v: v / 0), "values holds"),
        (_edit("value_format", lambda f: "int8"), "exactly when int8"),
    ],
)
def test_a_corrupted_float_state_is_a_value_error(corrupt, message):
    state = table_of("fp32").state_dict()
    corrupt(state)
    with pytest.raises(ValueError, match=message):
        BlockTable.from_state_dict(state)
    with pytest.raises(ValueError, match="must be a dict"):
        BlockTable.from_state_dict([state])
