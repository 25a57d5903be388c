"""Budgets and pruners: exact budgets per storage format, deterministic ties,
per-feature (non-prefix) dimensions, one dispatch by pruner name."""

from __future__ import annotations

import pytest
import torch

from mixemb.nn import MaskedEmbedding, RaggedEmbedding
from mixemb.prune import (
    PRUNERS,
    InfeasibleBudget,
    aligned_prune,
    block_tables_bytes,
    budget_keep,
    floor_prune,
    keep_count,
    merge_alpha,
    metadata_bytes,
    prune,
    prune_table,
    ragged_metadata_bytes,
    rotate_table,
    topk_mask,
    uniform_dim,
)
from mixemb.prune.budget import dense_bytes, ragged_bytes
from mixemb.prune.finetune import round_stored_values
from mixemb.prune.pruners import (
    allocate_block_mask,
    block_column_scores,
    block_mask_prune,
    expand_block_mask,
)
from mixemb.quant import VALUE_DTYPES, round_rows, round_segments


def test_merge_alpha_scales_each_row_by_its_block():
    w = torch.arange(12.0).reshape(6, 2)
    alpha = torch.tensor([[1.0, 0.0], [0.5, 2.0]])
    merged = merge_alpha(w, alpha, torch.tensor([0, 2, 6]))
    expected = w.clone()
    expected[:2, 1] = 0
    expected[2:] *= torch.tensor([0.5, 2.0])
    torch.testing.assert_close(merged, expected)


@pytest.mark.parametrize(
    "n,k,keep", [(50, 7, 0), (50, 7, 1), (50, 7, 123), (50, 7, 350), (1, 1, 1)]
)
def test_prune_hits_budget_exactly(n, k, keep):
    x = torch.randn(n, k, generator=torch.Generator().manual_seed(n + keep))
    pruned, report = prune(x, keep=keep)
    assert report.nnz == keep == int((pruned != 0).sum())
    assert int(report.dims.sum()) == keep
    if 0 < keep < x.numel():
        kept = x.abs()[pruned != 0]
        dropped = x.abs()[pruned == 0]
        assert kept.min() >= dropped.max()
        assert report.tau == pytest.approx(float(kept.min()))


def test_ties_are_broken_by_index_and_are_deterministic():
    x = torch.tensor([[1.0, -1.0, 1.0], [1.0, 0.5, -1.0]])
    mask = topk_mask(x, 3)
    assert mask.tolist() == [[True, True, True], [False, False, False]]
    assert torch.equal(topk_mask(x, 4), topk_mask(x.clone(), 4))


def test_dims_are_counts_not_prefixes():
    x = torch.tensor([[0.1, 5.0, 0.2, 4.0], [3.0, 0.1, 0.1, 0.1]])
    pruned, report = prune(x, keep=3)
    assert report.dims.tolist() == [2, 1]
    assert pruned[0].tolist() == [0.0, 5.0, 0.0, 4.0]  # dims 1 and 3 kept, not dims 0-1
    assert report.dim_histogram() == {1: 1, 2: 1}
    assert report.block_mean_dims(torch.tensor([0, 1, 2])) == [2.0, 1.0]


def test_ratio_and_tau_budgets():
    x = torch.randn(40, 10, generator=torch.Generator().manual_seed(0))
    _, r = prune(x, ratio=0.2)
    assert r.nnz == 80 and r.ratio == pytest.approx(0.2)
    pruned, r2 = prune(x, tau=1.0)
    assert r2.nnz == int((x.abs() >= 1.0).sum())
    assert bool((pruned.abs()[pruned != 0] >= 1.0).all())


def test_zero_entries_never_count_as_kept():
    x = torch.zeros(3, 4)
    x[0, 0] = 2.0
    _, report = prune(x, keep=5)
    assert report.nnz == 1


def test_byte_budget():
    assert keep_count(1000, nbytes=400, bytes_per_entry=4) == 100
    assert keep_count(1000, nbytes=400, bytes_per_entry=4, metadata=100) == 75
    assert keep_count(10, nbytes=400, bytes_per_entry=4) == 10  # more than the whole table
    with pytest.raises(InfeasibleBudget, match="metadata"):
        keep_count(1000, nbytes=99, bytes_per_entry=4, metadata=100)
    with pytest.raises(ValueError, match="bytes_per_entry"):
        keep_count(1000, nbytes=400)


def test_metadata_per_storage_format():
    # ragged: one mask word per 64 dims per row + one offset per 16 rows (and one more)
    assert ragged_metadata_bytes(100, 64) == 100 * 8 + 8 * 8
    assert ragged_metadata_bytes(100, 65) == 100 * 16 + 8 * 8
    assert metadata_bytes("ragged", 100, 64) == ragged_metadata_bytes(100, 64)
    assert metadata_bytes("blocks", 100, 64, num_blocks=10) == 8 * 11
    assert metadata_bytes("dense", 100, 64) == 0
    assert block_tables_bytes([10, 20], [4, 2]) == 4 * 80 + 8 * 3
    with pytest.raises(ValueError, match="storage"):
        metadata_bytes("csr", 100, 64)


@pytest.mark.parametrize("storage", ["ragged", "blocks", "dense"])
def test_a_byte_budget_pays_its_storage_metadata_first(storage):
    n, k, budget = 1000, 64, 0.1
    meta = metadata_bytes(storage, n, k, num_blocks=10)
    keep = budget_keep(budget, n, k, unit="bytes", storage=storage, num_blocks=10)
    assert keep == (int(budget * 4 * n * k) - meta) // 4
    assert 4 * keep + meta <= budget * 4 * n * k < 4 * (keep + 1) + meta
    assert budget_keep(budget, n, k) == round(budget * n * k)  # params: no metadata
    with pytest.raises(InfeasibleBudget, match="ragged metadata"):
        budget_keep(0.01, n, k, unit="bytes")
    with pytest.raises(ValueError, match="unit"):
        budget_keep(0.5, n, k, unit="rows")


def test_uniform_dim_is_the_floor_of_the_budget_at_least_one():
    assert [uniform_dim(b, 64) for b in (1.0, 0.5, 0.05, 0.001)] == [64, 32, 3, 1]
    assert uniform_dim(0.3, 10) == 3  # 0.3 * 10 is 2.9999999999999996 in floating point


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(), "exactly one budget"),
        (dict(keep=5, ratio=0.1), "exactly one budget"),
        (dict(keep=-1), "table has"),
        (dict(keep=10_000), "table has"),
        (dict(ratio=1.5), "ratio"),
    ],
)
def test_bad_budgets(kwargs, match):
    with pytest.raises(ValueError, match=match):
        keep_count(100, **kwargs)
    with pytest.raises(ValueError):
        prune(torch.ones(10, 10), tau=-1.0)


def test_aligned_prune_keeps_dnis_dims_at_nested_positions():
    g = torch.Generator().manual_seed(0)
    merged = torch.randn(50, 16, generator=g) * torch.linspace(2, 0.1, 16)
    ref, report = prune(merged, keep=200)
    table, mask = aligned_prune(merged, keep=200)
    assert int(mask.sum()) == 200 and torch.equal(mask.sum(1), report.dims)
    assert torch.equal(table != 0, mask) and torch.equal(table[mask], merged[mask])
    # any two rows: the smaller kept set lies inside the larger (overlap = min of dims)
    shared = (mask.unsqueeze(1) & mask.unsqueeze(0)).sum(-1)
    dims = mask.sum(1)
    assert torch.equal(shared, torch.minimum(dims.unsqueeze(1), dims.unsqueeze(0)))


def test_floor_prune_leaves_no_feature_empty_and_spends_the_rest_by_magnitude():
    g = torch.Generator().manual_seed(0)
    # rows fading in magnitude: plain magnitude pruning would empty the last ones
    merged = torch.randn(40, 8, generator=g) * torch.linspace(3, 0.01, 40).unsqueeze(1)
    merged[5] = 0  # an all-zero row stays empty (nothing to keep)
    table, mask = floor_prune(merged, keep=60)
    assert int(mask.sum()) == 60 and torch.equal(table != 0, mask)
    assert torch.equal(table[mask], merged[mask])
    nonzero = merged.ne(0).any(1)
    assert mask.any(1)[nonzero].all() and not mask[5].any()
    rows = torch.arange(40)
    assert mask[rows, merged.abs().argmax(1)][nonzero].all()  # each row's largest entry
    # beyond the forced entries, nothing left out is larger than what was chosen
    forced = torch.zeros_like(mask)
    forced[rows, merged.abs().argmax(1)] = True
    extra = mask & ~forced
    assert merged.abs()[extra].min() >= merged.abs()[~mask].max()
    with pytest.raises(InfeasibleBudget, match="below one entry for each of the 39"):
        floor_prune(merged, keep=38)


def test_rotation_keeps_dot_products_and_moves_energy_to_leading_columns():
    e = torch.randn(30, 8, generator=torch.Generator().manual_seed(2))
    r = rotate_table(e)
    assert torch.allclose(r @ r.T, e @ e.T, atol=1e-5)
    energy = (r * r).sum(0)
    assert bool((energy[:-1] >= energy[1:] - 1e-5).all())  # leading columns carry most


@pytest.mark.parametrize("pruner", PRUNERS)
def test_every_pruner_keeps_exactly_the_budget_behind_one_dispatch(pruner):
    g = torch.Generator().manual_seed(3)
    merged = torch.randn(40, 8, generator=g) * torch.linspace(3, 0.1, 40).unsqueeze(1)
    table, report = prune_table(merged, 100, pruner)
    assert report.nnz == int((table != 0).sum()) == 100 and report.numel == merged.numel()
    assert torch.equal(report.dims, (table != 0).sum(1))
    if pruner != "rot":  # the others keep Ê's own values
        assert torch.equal(table[table != 0], merged[table != 0])
    with pytest.raises(ValueError, match="pruner"):
        prune_table(merged, 100, "random")


def test_stored_bytes_per_format_and_value_dtype():
    assert dense_bytes(10, 6, "fp16") == 10 * 6 * 2
    assert dense_bytes(10, 6, "int8") == 10 * (6 + 4)  # fp16 scale and bias a row
    assert dense_bytes(10, 6) == 4 * 60
    assert block_tables_bytes([10, 20], [4, 2], "fp16") == 2 * 80 + 8 * 3
    assert block_tables_bytes([10, 20], [4, 0], "int8") == 40 + 4 * 10 + 8 * 3  # no row, no scale
    # blockmask: plus ceil(K/8) mask bytes a block
    assert block_tables_bytes([10, 20], [4, 2], "bf16", mask_dim=64) == 2 * 80 + 8 * 3 + 2 * 8
    assert metadata_bytes("blockmask", 30, 12, num_blocks=2, value_dtype="int8") == 24 + 4 + 120
    assert ragged_bytes(100, 64, 50, "fp16") == ragged_metadata_bytes(100, 64) + 100
    # int8 ragged rows: 1 B a value plus every row's fp16 scale and bias (RaggedTable.nbytes)
    assert ragged_bytes(100, 64, 50, "int8") == ragged_metadata_bytes(100, 64) + 50 + 4 * 100
    assert metadata_bytes("ragged", 100, 64, value_dtype="int8") == (
        ragged_metadata_bytes(100, 64) + 4 * 100
    )
    with pytest.raises(ValueError, match="ragged tables store .* got value_dtype='int4'"):
        ragged_bytes(100, 64, 50, "int4")


@pytest.mark.parametrize("value_dtype", ["fp32", "fp16", "bf16", "int8"])
@pytest.mark.parametrize("storage", ["blocks", "blockmask", "dense"])
def test_a_byte_budget_buys_more_values_at_a_lower_precision(storage, value_dtype):
    n, k, budget = 1000, 64, 0.05
    size = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}[value_dtype]
    meta = metadata_bytes(storage, n, k, num_blocks=10, value_dtype=value_dtype)
    keep = budget_keep(budget, n, k, unit="bytes", storage=storage, num_blocks=10,
                       value_dtype=value_dtype)  # fmt: skip
    assert size * keep + meta <= budget * 4 * n * k < size * (keep + 1) + meta


def test_uniform_dim_at_a_value_dtype_is_what_a_row_affords():
    # 5 % of a K = 64 fp32 row is 12.8 B: 3 fp32, 6 fp16 / bf16, 8 int8 (4 B of scale and bias)
    dims = [uniform_dim(0.05, 64, unit="bytes", value_dtype=d) for d in VALUE_DTYPES]
    assert dims == [3, 6, 6, 8]
    assert uniform_dim(0.1, 64, unit="bytes", value_dtype="int8") == 21
    assert uniform_dim(1.0, 64, unit="bytes", value_dtype="fp16") == 64  # at most K
    assert uniform_dim(0.05, 64, unit="params", value_dtype="fp16") == 3  # params: no bytes
    with pytest.raises(InfeasibleBudget, match="int8"):
        uniform_dim(0.01, 64, unit="bytes", value_dtype="int8")  # 2.56 B < 1 value + 4 B


def test_block_column_scores_are_the_rms_of_each_blocks_columns():
    g = torch.Generator().manual_seed(4)
    merged = torch.randn(9, 5, generator=g)
    bounds = torch.tensor([0, 2, 5, 9])
    scores = block_column_scores(merged, bounds)
    for block, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        rms = merged[a:b].double().square().mean(0).sqrt()
        torch.testing.assert_close(scores[block], rms)
    with pytest.raises(ValueError, match="block sizes"):
        block_column_scores(merged, torch.tensor([0, 0, 9]))
    weights = torch.arange(9.0)  # row 0 weighs nothing
    weighted = block_column_scores(merged, bounds, weights)
    for block, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        mean = (weights[a:b, None].double() * merged[a:b].double().square()).mean(0)
        torch.testing.assert_close(weighted[block], mean.sqrt())
    torch.testing.assert_close(block_column_scores(merged, bounds, torch.ones(9)), scores)
    for bad in (torch.ones(8), -weights, weights.clone().fill_(float("nan"))):
        with pytest.raises(ValueError, match="row_weights"):
            block_column_scores(merged, bounds, bad)


def test_block_mask_gives_every_block_a_column_then_spends_the_budget_by_score():
    scores = torch.tensor([[5.0, 4.0, 0.1], [0.2, 0.3, 3.0], [0.5, 0.4, 0.6]])
    sizes = [2, 3, 4]
    # forced: (0,0), (1,2), (2,2) = 9 entries; then (0,1) (2 entries), then the next that fit
    mask = allocate_block_mask(scores, sizes, keep=9 + 2 + 4)
    assert mask.tolist() == [[True, True, False], [False, False, True], [True, False, True]]
    # (2,0) does not fit 3 more entries; (2,1) neither; (1,1) (3 rows) does
    mask = allocate_block_mask(scores, sizes, keep=9 + 2 + 3)
    assert mask.tolist() == [[True, True, False], [False, True, True], [False, False, True]]
    with pytest.raises(InfeasibleBudget, match="one dimension"):
        allocate_block_mask(scores, sizes, keep=8)


def test_block_mask_prune_keeps_the_table_on_its_blocks_columns_within_the_budget():
    g = torch.Generator().manual_seed(5)
    merged = torch.randn(40, 8, generator=g) * torch.linspace(3, 0.1, 8)
    bounds = torch.tensor([0, 5, 15, 40])
    sizes = [5, 10, 25]
    for keep in (40, 77, 200, 320, 1000):
        pruned, block_mask = block_mask_prune(merged, bounds, keep)
        rows = expand_block_mask(block_mask, bounds)
        used = sum(s * int(d) for s, d in zip(sizes, block_mask.sum(1)))
        assert bool((block_mask.sum(1) >= 1).all()) and used <= keep
        left = [s for s, d in zip(sizes, block_mask.sum(1)) if d < 8]
        assert not left or keep - used < min(left)  # nothing more fits
        assert torch.equal(pruned[rows], merged[rows]) and not pruned[~rows].any()


def test_stored_values_are_rounded_per_format_and_the_mask_is_kept():
    g = torch.Generator().manual_seed(6)
    table = torch.randn(6, 4, generator=g)
    emb = torch.nn.Embedding(6, 4)
    emb.weight.data.copy_(table)
    round_stored_values(emb, "int8")
    assert torch.equal(emb.weight.detach(), round_rows(table, "int8"))
    mask = torch.rand(6, 4, generator=g) > 0.4
    masked = MaskedEmbedding(table * 100, mask)  # the pruned zeros set no int8 range
    round_stored_values(masked, "int8")
    want = round_segments((table * 100)[mask], mask.sum(1), "int8")
    assert torch.equal(masked.weight.detach()[mask], want) and not masked.weight[~mask].any()
    pruned = table * mask
    ragged = RaggedEmbedding.from_dense(pruned)
    assert ragged.nbytes() == ragged_bytes(6, 4, int(mask.sum()))  # the one count, fp32
    round_stored_values(ragged, "bf16")
    assert torch.equal(ragged.table.to_dense(), pruned.bfloat16().float())
    with pytest.raises(TypeError, match="Linear"):
        round_stored_values(torch.nn.Linear(2, 2), "fp16")
