"""Metrics against hand-computed values (arithmetic in the comments) and brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mixemb.metrics import (
    PRIMARY_METRIC,
    auc,
    compute_metrics,
    hit_rate_at_k,
    logloss,
    mse,
    ndcg_at_k,
    primary_metric,
    rmse,
)


def test_mse_rmse_by_hand():
    # errors 1, -2, 0.5 -> squares 1, 4, 0.25 -> mean 5.25 / 3 = 1.75
    p, y = torch.tensor([4.0, 1.0, 3.5]), torch.tensor([3.0, 3.0, 3.0])
    assert mse(p, y) == pytest.approx(1.75)
    assert rmse(p, y) == pytest.approx(math.sqrt(1.75))
    assert isinstance(mse(p, y), float)


def test_auc_by_hand():
    # positives 0.35, 0.8; negatives 0.1, 0.4. Pairs (pos > neg): 0.35>0.1 yes, 0.35>0.4 no,
    # 0.8>0.1 yes, 0.8>0.4 yes -> 3 of 4 = 0.75
    assert auc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1])) == 0.75


def test_auc_with_ties_by_hand():
    # scores [0.5, 0.5, 0.2, 0.9], labels [1, 0, 0, 1]. Pairs: pos 0.5 vs neg 0.5 tie -> 0.5,
    # pos 0.5 vs 0.2 -> 1, pos 0.9 vs 0.5 -> 1, pos 0.9 vs 0.2 -> 1: 3.5 / 4 = 0.875.
    # Ranks with average for ties: 0.2 -> 1, 0.5/0.5 -> 2.5, 0.9 -> 4; positive rank sum 6.5,
    # U = 6.5 - 2*3/2 = 3.5.
    assert auc([0.5, 0.5, 0.2, 0.9], [1, 0, 0, 1]) == pytest.approx(0.875)
    assert auc(torch.zeros(6), torch.tensor([0, 1, 0, 1, 1, 0])) == pytest.approx(0.5)


def test_auc_equals_brute_force_pair_probability():
    gen = np.random.default_rng(0)
    scores = gen.integers(0, 12, 300).astype(np.float32)  # many ties
    labels = (gen.random(300) < 0.3).astype(np.float32)
    pos, neg = scores[labels == 1], scores[labels == 0]
    diff = pos[:, None] - neg[None, :]
    brute = ((diff > 0) + 0.5 * (diff == 0)).mean()
    assert auc(torch.from_numpy(scores), torch.from_numpy(labels)) == pytest.approx(brute)


def test_auc_one_class_raises():
    with pytest.raises(ValueError, match="one class"):
        auc(torch.tensor([0.1, 0.2]), torch.tensor([1.0, 1.0]))


def test_logloss_matches_naive_and_is_stable():
    z, y = torch.tensor([0.3, -1.2, 2.0]), torch.tensor([1.0, 0.0, 0.0])
    p = torch.sigmoid(z.double())
    naive = float(-(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean())
    assert logloss(z, y) == pytest.approx(naive)
    # logits ±100: right ones cost ~0 (e^-100), wrong ones cost ~100 each -> mean 200 / 4 = 50
    big = logloss(torch.tensor([100.0, -100.0, 100.0, -100.0]), torch.tensor([1, 0, 0, 1]))
    assert math.isfinite(big) and big == pytest.approx(50.0)
    assert logloss(z, y) == pytest.approx(float(F.binary_cross_entropy_with_logits(z, y)))


def test_hit_rate_and_ndcg_by_hand():
    # 3 groups of 4 (positive first).
    # g1: pos 0.9, negs 0.1 0.2 0.3 -> 0 negatives >= 0.9 -> rank 0
    # g2: pos 0.5, negs 0.6 0.7 0.1 -> 2 negatives >= 0.5 -> rank 2
    # g3: pos 0.4, negs 0.4 0.1 0.2 -> tie counts against the positive -> rank 1
    s = torch.tensor([0.9, 0.1, 0.2, 0.3, 0.5, 0.6, 0.7, 0.1, 0.4, 0.4, 0.1, 0.2])
    # k=2: hits g1, g3 -> 2/3; NDCG = (1/log2(2) + 0 + 1/log2(3)) / 3
    assert hit_rate_at_k(s, 4, 2) == pytest.approx(2 / 3)
    assert ndcg_at_k(s, 4, 2) == pytest.approx((1 + 1 / math.log2(3)) / 3)
    # k=3: all hit; NDCG = (1 + 1/log2(4) + 1/log2(3)) / 3 = (1 + 0.5 + 0.6309) / 3
    assert hit_rate_at_k(s, 4, 3) == pytest.approx(1.0)
    assert ndcg_at_k(s, 4, 3) == pytest.approx((1 + 0.5 + 1 / math.log2(3)) / 3)
    # k=1: only g1 -> 1/3 for both
    assert hit_rate_at_k(s, 4, 1) == ndcg_at_k(s, 4, 1) == pytest.approx(1 / 3)


def test_constant_scorer_gets_no_hits():
    # all ties: every positive has rank group_size - 1 = 4 -> no hit for k < 5, hit for k = 5
    s = torch.zeros(20)
    assert hit_rate_at_k(s, 5, 4) == 0.0 and ndcg_at_k(s, 5, 4) == 0.0
    assert hit_rate_at_k(s, 5, 5) == 1.0
    assert ndcg_at_k(s, 5, 5) == pytest.approx(1 / math.log2(6))


def test_nan_scores_count_as_worst():
    # g1: NaN positive -> rank 1 (miss at k=1); g2: NaN negative -> positive rank 0 (hit)
    s = torch.tensor([float("nan"), 0.0, 1.0, float("nan")])
    assert hit_rate_at_k(s, 2, 1) == 0.5
    assert auc(torch.tensor([float("nan"), 0.0, 1.0]), torch.tensor([1, 0, 0])) == 0.0


def test_compute_metrics_and_primary_metric():
    y = torch.tensor([0.0, 1.0, 1.0, 0.0])
    s = torch.tensor([-1.0, 2.0, 0.5, 1.0])
    assert set(compute_metrics("rating", s, y)) == {"mse", "rmse"}
    ctr = compute_metrics("ctr", s, y)
    assert set(ctr) == {"auc", "logloss"} and ctr["auc"] == pytest.approx(0.75)
    top = compute_metrics("topk", torch.tensor([2.0, 1.0, 0.0, 3.0]), [1, 0, 1, 0], 2, k=1)
    assert top == {"hr@1": 0.5, "ndcg@1": 0.5}
    with pytest.raises(ValueError, match="positive"):
        compute_metrics("topk", s, y, group_size=2, k=1)
    assert primary_metric("rating") == ("mse", "min")
    assert primary_metric("ctr") == ("auc", "max")
    assert primary_metric("topk", 5) == ("ndcg@5", "max")
    assert PRIMARY_METRIC == {t: primary_metric(t) for t in ("rating", "ctr", "topk")}
    with pytest.raises(ValueError, match="unknown task"):
        primary_metric("ranking")


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="empty"):
        compute_metrics("rating", torch.empty(0), torch.empty(0))
    with pytest.raises(ValueError, match="empty"):
        hit_rate_at_k(torch.empty(0), 2, 1)
    with pytest.raises(ValueError, match="differ in length"):
        mse(torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match="groups of 4"):
        hit_rate_at_k(torch.zeros(6), 4, 1)
    with pytest.raises(ValueError, match="0 or 1"):
        auc(torch.zeros(2), torch.tensor([0.0, 2.0]))
