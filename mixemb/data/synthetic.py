"""Synthetic recommendation data at any size: Zipf feature frequencies, planted low-rank signal.

Users and items are drawn from Zipf(``zipf_exponent``) distributions over a random
permutation of their raw ids (so raw ids are not already frequency-sorted). Hidden
rank-``rank`` factors give each (user, item) pair a signal s = <p_u, q_i> / sqrt(rank):

* task "rating": rating = clip(3 + 1.2 s + noise·N(0, 1), 1, 5) (float, not rounded);
* task "ctr": label ~ Bernoulli(sigmoid(2 s + noise·N(0, 1))).

The output has the columns of a MovieLens interaction file (user_id, item_id as str,
rating or label, timestamp as float64, all timestamps distinct), so every task
(rating, ctr, topk) runs on it through the same encoder and splits as real data.
Vectorised: millions of rows take about a second.
"""

from __future__ import annotations

import numpy as np


def zipf_choice(rng: np.random.Generator, n: int, size: int, exponent: float) -> np.ndarray:
    """``size`` draws from {0..n-1} with P(rank r) ∝ (r+1)^-exponent, ranks randomly permuted."""
    weights = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** exponent
    cdf = np.cumsum(weights)
    ranks = np.searchsorted(cdf, rng.random(size) * cdf[-1], side="right")
    return rng.permutation(n)[np.minimum(ranks, n - 1)]


def make_synthetic(
    num_rows: int = 20_000,
    num_users: int = 500,
    num_items: int = 300,
    zipf_exponent: float = 1.1,
    rank: int = 4,
    noise: float = 0.1,
    task: str = "rating",
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Raw columns user_id, item_id (object arrays of str), rating (task "rating") or
    label (task "ctr", 0/1), timestamp (float64); ``num_rows`` rows."""
    if min(num_rows, num_users, num_items, rank) < 1:
        raise ValueError("num_rows, num_users, num_items and rank must be >= 1")
    if task not in ("rating", "ctr"):
        raise ValueError(f"synthetic task must be rating or ctr, got {task!r}")
    if zipf_exponent < 0 or noise < 0:
        raise ValueError("zipf_exponent and noise must be >= 0")
    rng = np.random.default_rng(seed)
    users = zipf_choice(rng, num_users, num_rows, zipf_exponent)
    items = zipf_choice(rng, num_items, num_rows, zipf_exponent)
    p = rng.standard_normal((num_users, rank))
    q = rng.standard_normal((num_items, rank))
    signal = np.einsum("nr,nr->n", p[users], q[items]) / np.sqrt(rank)
    eps = noise * rng.standard_normal(num_rows)
    user_names = np.array([f"u{i}" for i in range(num_users)], dtype=object)
    item_names = np.array([f"i{i}" for i in range(num_items)], dtype=object)
    out = {"user_id": user_names[users], "item_id": item_names[items]}
    if task == "rating":
        out["rating"] = np.clip(3.0 + 1.2 * signal + eps, 1.0, 5.0)
    else:
        prob = 1.0 / (1.0 + np.exp(-(2.0 * signal + eps)))
        out["label"] = (rng.random(num_rows) < prob).astype(np.float64)
    out["timestamp"] = rng.permutation(num_rows).astype(np.float64)
    return out
