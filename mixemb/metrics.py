"""Evaluation metrics: tensors (or array-likes) in, Python floats out, fully vectorised.

All computations run in float64. Per task (:func:`compute_metrics`):

- ``rating``: ``mse``, ``rmse`` of the predicted ratings;
- ``ctr``: ``auc`` and ``logloss`` of the logits;
- ``topk``: ``hr@k`` and ``ndcg@k`` over groups of ``group_size`` consecutive rows, the
  positive first in each group, then its sampled negatives.

Top-k ties are resolved **pessimistically**: the positive's rank is the number of
negatives in its group scoring ``>=`` the positive, so a constant scorer ranks every
positive last and gets no hits when ``k < group_size``. NaN scores count as ``-inf``
(worst) in rankings, so a diverged model cannot score hits by accident.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

METRIC_TASKS = ("rating", "ctr", "topk")

#: Model-selection metric and direction per task at the default k = 10; use
#: :func:`primary_metric` for another k.
PRIMARY_METRIC: dict[str, tuple[str, str]] = {
    "rating": ("mse", "min"),
    "ctr": ("auc", "max"),
    "topk": ("ndcg@10", "max"),
}


def _vec(x, name: str) -> torch.Tensor:
    t = torch.as_tensor(x).detach()
    if t.dim() != 1:
        t = t.reshape(-1)
    if t.numel() == 0:
        raise ValueError(f"{name} is empty: cannot compute a metric over no rows")
    return t.to(device="cpu", dtype=torch.float64)


def _pair(a, b, names: tuple[str, str]) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = _vec(a, names[0]), _vec(b, names[1])
    if a.shape != b.shape:
        raise ValueError(f"{names[0]} and {names[1]} differ in length: {a.numel()} vs {b.numel()}")
    return a, b


def _binary(labels: torch.Tensor) -> torch.Tensor:
    if not bool(((labels == 0) | (labels == 1)).all()):
        raise ValueError("labels must be 0 or 1")
    return labels


def mse(predictions, labels) -> float:
    """Mean squared error."""
    p, y = _pair(predictions, labels, ("predictions", "labels"))
    return float(((p - y) ** 2).mean())


def rmse(predictions, labels) -> float:
    """Root mean squared error."""
    return math.sqrt(mse(predictions, labels))


def logloss(logits, labels) -> float:
    """Mean binary cross-entropy computed stably from logits (finite for logits of ±1e4)."""
    z, y = _pair(logits, labels, ("logits", "labels"))
    return float(F.binary_cross_entropy_with_logits(z, _binary(y)))


def _nan_to_worst(scores: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isnan(scores), torch.full_like(scores, -math.inf), scores)


def auc(scores, labels) -> float:
    """Area under the ROC curve: the Mann–Whitney U statistic with average ranks for ties,
    i.e. P(score of a random positive > score of a random negative) + 0.5·P(tie).

    Raises ValueError when ``labels`` hold only one class."""
    s, y = _pair(scores, labels, ("scores", "labels"))
    pos = _binary(y).bool()
    n_pos = int(pos.sum())
    n_neg = pos.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"AUC is undefined with one class only ({n_pos} positives, {n_neg} negatives)"
        )
    _, inverse, counts = torch.unique(_nan_to_worst(s), return_inverse=True, return_counts=True)
    # 1-based average rank of each distinct value: last rank of its run minus (count - 1) / 2.
    ends = torch.cumsum(counts, 0).to(torch.float64)
    avg_rank = ends - (counts.to(torch.float64) - 1) / 2
    rank_sum = float(avg_rank[inverse][pos].sum())
    u = rank_sum - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def _positive_ranks(scores, group_size: int, k: int) -> torch.Tensor:
    """0-based rank of each group's positive (row 0 of the group): the number of negatives
    in the group scoring >= it (ties count against the positive)."""
    if int(group_size) != group_size or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    s = _nan_to_worst(_vec(scores, "scores"))
    if s.numel() % group_size:
        raise ValueError(f"{s.numel()} scores do not form groups of {group_size}")
    groups = s.view(-1, int(group_size))
    return (groups[:, 1:] >= groups[:, :1]).sum(1)


def hit_rate_at_k(scores, group_size: int, k: int = 10) -> float:
    """HR@k: fraction of groups whose positive (first row) ranks among the top k
    (pessimistic ties: see the module docstring)."""
    rank = _positive_ranks(scores, group_size, k)
    return float((rank < k).to(torch.float64).mean())


def ndcg_at_k(scores, group_size: int, k: int = 10) -> float:
    """NDCG@k with one relevant item per group: mean of 1/log2(rank + 2) if rank < k else 0
    (0-based rank, pessimistic ties: see the module docstring)."""
    rank = _positive_ranks(scores, group_size, k).to(torch.float64)
    gain = torch.where(rank < k, 1.0 / torch.log2(rank + 2), torch.zeros_like(rank))
    return float(gain.mean())


def _check_task(task: str) -> None:
    if task not in METRIC_TASKS:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(METRIC_TASKS)}")


def compute_metrics(
    task: str, scores, labels, group_size: int = 1, k: int = 10
) -> dict[str, float]:
    """Metrics of ``task`` for model ``scores`` (ratings or logits) against ``labels``.

    rating → {"mse", "rmse"}; ctr → {"auc", "logloss"}; topk → {"hr@k", "ndcg@k"}.
    For topk, ``labels`` must follow the group layout (1 for the first row of every group of
    ``group_size``, 0 for the rest); ranking uses the scores only.
    """
    _check_task(task)
    s, y = _pair(scores, labels, ("scores", "labels"))
    if task == "rating":
        m = mse(s, y)
        return {"mse": m, "rmse": math.sqrt(m)}
    if task == "ctr":
        return {"auc": auc(s, y), "logloss": logloss(s, y)}
    if int(group_size) != group_size or group_size < 1 or s.numel() % group_size:
        raise ValueError(f"{s.numel()} rows do not form groups of {group_size!r}")
    g = y.view(-1, int(group_size))
    if not (bool((g[:, 0] == 1).all()) and bool((g[:, 1:] == 0).all())):
        raise ValueError(
            f"topk labels must come in groups of {group_size}: the positive (1) first, "
            "then its negatives (0)"
        )
    return {f"hr@{k}": hit_rate_at_k(s, group_size, k), f"ndcg@{k}": ndcg_at_k(s, group_size, k)}


def primary_metric(task: str, k: int = 10) -> tuple[str, str]:
    """The model-selection metric of ``task`` and its direction: ("mse", "min"),
    ("auc", "max") or (f"ndcg@{k}", "max")."""
    _check_task(task)
    if task == "rating":
        return "mse", "min"
    if task == "ctr":
        return "auc", "max"
    return f"ndcg@{k}", "max"
