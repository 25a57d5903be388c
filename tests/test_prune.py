"""Merge-and-prune: exact budgets, deterministic ties, per-feature (non-prefix) dimensions."""

from __future__ import annotations

import pytest
import torch

from mixemb.prune import keep_count, merge_alpha, prune, topk_mask


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
    with pytest.raises(ValueError, match="bytes_per_entry"):
        keep_count(1000, nbytes=400)


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
