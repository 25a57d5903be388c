"""The benches' padded baselines (bench/padded.py, bench/padded_triton.py), their ideal bytes,
the comparison with the fastest of them (bench/common.py), and the DRAM-only bytes of the
ragged serving ops (mixemb.reference's ``unique_rows``).

The Triton gather runs in Triton's interpreter on CPU (conftest sets TRITON_INTERPRET=1
before it is imported), so its shapes stay tiny; on a GPU the same cases run on CUDA.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mixemb.reference import (
    padded_bag_bytes,
    padded_dot_bytes,
    ragged_bag_bytes,
    ragged_dot_bytes,
    ragged_gather_bytes,
)

ROOT = Path(__file__).resolve().parents[1]
HAS_CUDA = torch.cuda.is_available()
NEEDS_TRITON = pytest.mark.skipif(
    not (HAS_CUDA or os.environ.get("TRITON_INTERPRET") == "1"),
    reason="needs CUDA or TRITON_INTERPRET=1",
)


@pytest.fixture
def bench_module(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    return importlib.import_module


# name → (rows N, dim K, ids shape, ids dtype, table dtype)
GATHER_CASES = {
    "K5": (20, 5, (7,), torch.int64, torch.float32),
    "K1-one-row": (1, 1, (4,), torch.int64, torch.float32),
    "K200-two-tiles": (9, 200, (3, 2), torch.int32, torch.float32),
    "K64-2d-hot": (30, 64, (17, 3), torch.int64, torch.float32),
    "fp16": (12, 24, (5,), torch.int32, torch.float16),
    "empty": (10, 8, (0, 3), torch.int64, torch.float32),
}


@NEEDS_TRITON
@pytest.mark.parametrize("name", list(GATHER_CASES))
def test_triton_gather_matches_f_embedding(bench_module, device, name):
    padded_gather = bench_module("padded_triton").padded_gather
    n, k, shape, ids_dtype, dtype = GATHER_CASES[name]
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(n, k, generator=g).to(dtype).to(device)
    ids = torch.randint(0, n, shape, generator=g)
    if name.endswith("hot") and ids.numel():
        ids.view(-1)[::2] = 0
    ids = ids.to(ids_dtype).to(device)
    want = F.embedding(ids.long(), weight)
    got = padded_gather(weight, ids)
    assert got.shape == want.shape and got.dtype == dtype
    assert torch.equal(got, want), f"{int((got != want).sum())} values differ"
    out = torch.full_like(want, float("nan"))
    assert padded_gather(weight, ids, out=out) is out and torch.equal(out, want)


@NEEDS_TRITON
def test_triton_gather_reads_a_table_with_row_padding_and_strided_ids(bench_module, device):
    padded_gather = bench_module("padded_triton").padded_gather
    big = torch.randn(10, 48, device=device)
    weight = big[:, :40]  # row stride 48
    ids = (torch.arange(20, device=device) % 10).flip(0)[::2]  # a view of stride -2
    assert torch.equal(padded_gather(weight, ids), F.embedding(ids, weight))


def test_triton_gather_rejects_bad_inputs(bench_module):
    padded_gather = bench_module("padded_triton").padded_gather
    weight = torch.randn(6, 4)
    ids = torch.tensor([0, 5])
    with pytest.raises(ValueError, match="weight must be"):
        padded_gather(torch.randn(6), ids)
    with pytest.raises(ValueError, match="weight must be"):
        padded_gather(weight.t(), ids)
    with pytest.raises(ValueError, match="ids must be"):
        padded_gather(weight, ids.float())
    with pytest.raises(ValueError, match="out must be"):
        padded_gather(weight, ids, out=torch.empty(2, 5))
    with pytest.raises(ValueError, match="out must be"):
        padded_gather(weight, ids, out=torch.empty(2, 4, dtype=torch.float64))


def test_padded_expressions_match_their_eager_ops(bench_module):
    padded = bench_module("padded")
    g = torch.Generator().manual_seed(1)
    weight = torch.randn(50, 8, generator=g)
    ids = torch.randint(0, 50, (6, 4), generator=g)
    flat = ids.reshape(-1)
    offsets = torch.arange(0, flat.numel(), 4)
    bags = F.embedding_bag(flat, weight, offsets, mode="sum")
    torch.testing.assert_close(padded.bag_sum(weight, ids), bags)
    other = torch.randint(0, 50, (flat.numel(),), generator=g)
    torch.testing.assert_close(
        padded.dot(weight, flat, other), (weight[flat] * weight[other]).sum(1)
    )
    assert padded.is_padded({"provider": "padded-triton"})
    assert not padded.is_padded({"provider": "mixemb"})


def test_padded_bytes_count_rows_per_lookup_or_per_distinct_row():
    m, b, k = 104, 4, 64
    assert padded_bag_bytes(m, b, k) == m * k * 4 + m * 8 + b * k * 4 + b * 8
    assert padded_bag_bytes(m, b, k, unique_rows=m) == padded_bag_bytes(m, b, k)
    assert padded_bag_bytes(m, b, k, unique_rows=10) == (
        padded_bag_bytes(m, b, k) - (m - 10) * k * 4
    )
    assert padded_dot_bytes(m, k) == 2 * m * k * 4 + 2 * m * 8 + m * 4
    assert padded_dot_bytes(m, k, unique_rows=7) == 7 * k * 4 + 2 * m * 8 + m * 4
    assert padded_bag_bytes(m, b, k, torch.float16, torch.int32) == (
        m * k * 2 + m * 4 + b * k * 2 + b * 8
    )
    with pytest.raises(ValueError, match="unique_rows"):
        padded_bag_bytes(m, b, k, unique_rows=m + 1)
    with pytest.raises(ValueError, match="unique_rows"):
        padded_dot_bytes(m, k, unique_rows=2 * m + 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, "int8"])
def test_ragged_bytes_read_metadata_once_per_distinct_row(dtype):
    m, b, k, kept, kept_u, u = 400, 16, 64, 9000, 2000, 90
    per_row = 8 + 8 + (4 if dtype == "int8" else 0)  # mask word, group offset, scale+bias
    assert ragged_gather_bytes(m, k, kept, dtype, unique_rows=m) == ragged_gather_bytes(
        m, k, kept, dtype
    )
    full = ragged_gather_bytes(m, k, kept, dtype)
    assert ragged_gather_bytes(m, k, kept, dtype, unique_rows=u) == full - (m - u) * per_row
    dram = ragged_gather_bytes(m, k, kept_u, dtype, unique_rows=u)
    assert dram < full
    bag = ragged_bag_bytes(m, b, k, kept, dtype)
    assert ragged_bag_bytes(m, b, k, kept, dtype, unique_rows=u) == bag - (m - u) * per_row
    dot = ragged_dot_bytes(m, k, kept, dtype)
    assert ragged_dot_bytes(m, k, kept, dtype, unique_rows=2 * m) == dot
    assert ragged_dot_bytes(m, k, kept, dtype, unique_rows=u) == dot - (2 * m - u) * per_row
    with pytest.raises(ValueError, match="unique_rows"):
        ragged_gather_bytes(m, k, kept, dtype, unique_rows=m + 1)
    with pytest.raises(ValueError, match="unique_rows"):
        ragged_dot_bytes(m, k, kept, dtype, unique_rows=-1)


def test_each_row_is_compared_with_its_group_s_fastest_padded_row(bench_module):
    common = bench_module("common")
    rows = [
        {"provider": "torch", "op": "copy", "ms": 5.0},
        {"provider": "mixemb", "op": "gather", "ms": 1.0},
        {"provider": "padded", "op": "gather", "ms": 4.0},
        {"provider": "padded-compile", "op": "gather", "ms": 2.0},
        {"provider": "padded-triton", "op": "gather", "ms": None},  # failed: not a candidate
        {"provider": "mixemb", "op": "bag", "ms": 3.0},  # no padded bag here
        {"provider": "mixemb-fp16", "op": "gather", "ms": None},
    ]
    notes = common.compare_to_best_padded(
        rows,
        is_padded=lambda r: r["provider"].startswith("padded"),
        group=lambda r: None if r["op"] == "copy" else r["op"],
    )
    ratio = [r["vs_best_padded"] for r in rows]
    assert ratio == [None, 0.5, 2.0, 1.0, None, None, None]
    assert [r["best_padded"] for r in rows] == [None] + ["padded-compile"] * 4 + [None] + [
        "padded-compile"
    ]
    assert notes == ["fastest padded, gather: padded-compile 2 ms"]
