"""Synthetic recommendation data at any size: Zipf feature frequencies, planted low-rank signal.

Users and items are drawn from Zipf(``zipf_exponent``) distributions over a random
permutation of their raw ids (so raw ids are not already frequency-sorted); the rating
is 3 + a scaled dot product of hidden rank-``rank`` factors + Gaussian noise, clipped to
[1, 5]. The output has the columns of a MovieLens interaction file, so every task
(rating, ctr, topk) runs on it through the same encoder and splits as real data.
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
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Raw columns user_id, item_id (str), rating, timestamp (float64), ``num_rows`` rows."""
    if min(num_rows, num_users, num_items, rank) < 1:
        raise ValueError("num_rows, num_users, num_items and rank must be >= 1")
    rng = np.random.default_rng(seed)
    users = zipf_choice(rng, num_users, num_rows, zipf_exponent)
    items = zipf_choice(rng, num_items, num_rows, zipf_exponent)
    p = rng.standard_normal((num_users, rank))
    q = rng.standard_normal((num_items, rank))
    signal = np.einsum("nr,nr->n", p[users], q[items]) / np.sqrt(rank)
    rating = np.clip(3.0 + 1.2 * signal + noise * rng.standard_normal(num_rows), 1.0, 5.0)
    return {
        "user_id": np.char.add("u", users.astype(str)),
        "item_id": np.char.add("i", items.astype(str)),
        "rating": rating,
        "timestamp": rng.permutation(num_rows).astype(np.float64),
    }
