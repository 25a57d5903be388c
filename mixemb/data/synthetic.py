"""Synthetic recommendation data at any size: Zipf feature frequencies, planted low-rank signal.

Each of the ``num_fields`` categorical fields (``user_id``, ``item_id``, then ``f2``,
``f3``, ...) draws its values from a Zipf(``zipf_exponent``) distribution over its
vocabulary, through a random permutation of the raw ids (so raw ids are not already
frequency-sorted). Every value has a hidden rank-``rank`` factor, and the signal of a row
is the sum of the pairwise dot products of its fields' factors (a factorization machine
with no linear terms), s = Σ_{a<b} <v_a, v_b> / sqrt(rank · #pairs) — for two fields just
<p_user, q_item> / sqrt(rank):

* task "rating": rating = clip(3 + 1.2 s + noise·N(0, 1), 1, 5) (float, not rounded);
* task "ctr": label ~ Bernoulli(sigmoid(2 s + noise·N(0, 1))).

The output has the columns of a MovieLens interaction file (user_id, item_id as str,
rating or label, timestamp as float64, all timestamps distinct) plus the extra fields,
so every task runs on it through the same encoder and splits as real data (rating and
ctr use every field; topk uses user_id and item_id).
Vectorised: millions of rows take about a second.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def zipf_choice(rng: np.random.Generator, n: int, size: int, exponent: float) -> np.ndarray:
    """``size`` draws from {0..n-1} with P(rank r) ∝ (r+1)^-exponent, ranks randomly permuted."""
    weights = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** exponent
    cdf = np.cumsum(weights)
    ranks = np.searchsorted(cdf, rng.random(size) * cdf[-1], side="right")
    return rng.permutation(n)[np.minimum(ranks, n - 1)]


def field_names(num_fields: int) -> list[str]:
    """user_id, item_id, f2, f3, ..."""
    return ["user_id", "item_id", *(f"f{j}" for j in range(2, num_fields))]


def make_synthetic(
    num_rows: int = 20_000,
    num_users: int = 500,
    num_items: int = 300,
    zipf_exponent: float = 1.1,
    rank: int = 4,
    noise: float = 0.1,
    task: str = "rating",
    seed: int = 0,
    num_fields: int = 2,
    vocab_sizes: Sequence[int] | None = None,
) -> dict[str, np.ndarray]:
    """Raw columns user_id, item_id, f2, ... (object arrays of str, ``num_fields`` in all),
    rating (task "rating") or label (task "ctr", 0/1), timestamp (float64); ``num_rows`` rows.

    vocab_sizes: one vocabulary size per field (default: ``num_users``, ``num_items``,
    then ``num_items`` for every extra field).
    """
    if num_fields < 2:
        raise ValueError(f"num_fields must be >= 2, got {num_fields}")
    if vocab_sizes is None:
        vocab_sizes = [num_users, num_items] + [num_items] * (num_fields - 2)
    vocab_sizes = [int(v) for v in vocab_sizes]
    if len(vocab_sizes) != num_fields:
        raise ValueError(f"vocab_sizes has {len(vocab_sizes)} entries for {num_fields} fields")
    if min(num_rows, rank, *vocab_sizes) < 1:
        raise ValueError("num_rows, rank and every vocabulary size must be >= 1")
    if task not in ("rating", "ctr"):
        raise ValueError(f"synthetic task must be rating or ctr, got {task!r}")
    if zipf_exponent < 0 or noise < 0:
        raise ValueError("zipf_exponent and noise must be >= 0")
    rng = np.random.default_rng(seed)
    draws = [zipf_choice(rng, v, num_rows, zipf_exponent) for v in vocab_sizes[:2]]
    factors = [rng.standard_normal((v, rank)) for v in vocab_sizes[:2]]
    for v in vocab_sizes[2:]:  # drawn after the first two: two-field data stays as it was
        draws.append(zipf_choice(rng, v, num_rows, zipf_exponent))
        factors.append(rng.standard_normal((v, rank)))
    # Σ_{a<b} <v_a, v_b> = (|Σ v_a|² - Σ |v_a|²) / 2, one field at a time (O(n·rank) memory)
    total = np.zeros((num_rows, rank))
    squares = np.zeros(num_rows)
    for idx, fac in zip(draws, factors):
        v = fac[idx]
        total += v
        squares += np.einsum("nr,nr->n", v, v)
    pairs = num_fields * (num_fields - 1) // 2
    signal = (np.einsum("nr,nr->n", total, total) - squares) / 2 / np.sqrt(rank * pairs)
    eps = noise * rng.standard_normal(num_rows)
    out = {}
    for name, idx, v, prefix in zip(
        field_names(num_fields), draws, vocab_sizes, ["u", "i"] + ["v"] * (num_fields - 2)
    ):
        labels = np.array([f"{prefix}{k}" for k in range(v)], dtype=object)
        out[name] = labels[idx]
    if task == "rating":
        out["rating"] = np.clip(3.0 + 1.2 * signal + eps, 1.0, 5.0)
    else:
        prob = 1.0 / (1.0 + np.exp(-(2.0 * signal + eps)))
        out["label"] = (rng.random(num_rows) < prob).astype(np.float64)
    out["timestamp"] = rng.permutation(num_rows).astype(np.float64)
    return out
