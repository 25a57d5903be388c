"""The planted benchmark: Criteo-like CTR data whose per-feature signal dimension is known.

Schema: ``num_fields`` categorical fields ``C1`` … ``C<F>`` (default 26, Criteo's count)
with cardinalities on a geometric ladder from ``min_cardinality`` (3) to
``max_cardinality · scale`` (1,000,000 · scale): ``scale`` shrinks every cardinality
above the smallest for tests and CPU runs. Within each field, values are drawn from a
Zipf(``zipf_exponent``) law, p_f(v) ∝ (v+1)^-zipf_exponent for the v-th most probable
value, whose raw string is a random relabelling (raw strings say nothing of frequency).

Planted dimensions r_i ~ Binomial(``dim``, p_i), by one of two laws (``dims_law``):

* ``"field"`` (default): p_i = m_f, the field's mean fraction, from ``linspace(0, 1, F)``
  assigned to the fields in random order (independent of the field's cardinality: some
  fields carry nothing, others use every dimension). r_i is drawn independently of the
  value's frequency rank: within a field it does not follow frequency at all; across
  fields a frequency block's mean r is whatever mix of fields the block holds, so block
  means vary little and not monotonically.
* ``"hump"``: p_i = 4 z_i (1 − z_i), z_i ∈ [0, 1] the value's rank by expected
  frequency among the values of all fields, as a fraction (0: the most probable value
  of any field, 1: the least): the middle frequency blocks get the most dimensions, the
  head and the tail few — non-monotonic in frequency, so a frequency power law (MDE)
  gets the head wrong.

Signal: value i has the vector u_i = B_f · [c_i, 0] with c_i ~ N(0, I_{r_i}), i.e. unit
variance on each of r_i dimensions (so |u_i|² ≈ r_i: more planted dims, more signal);
``basis="axis"`` keeps B_f = I (u_i lives on the first r_i coordinates, the same axes
for every field: element-wise pruning and a rotation to principal axes can find them
directly), ``basis="field"`` uses a random orthonormal B_f per field (the planted
subspace of a field is not axis-aligned and differs between fields). A row's logit is
``bias + signal · s / std(s) + noise · N(0, 1)`` with s = Σ_{f<g} <u_{i_f}, u_{i_g}> (a
factorization machine with no first-order terms, so every bit of signal is in the
embeddings; std over the generated rows) and its label ~ Bernoulli(sigmoid(logit)).

:func:`mixemb.data.load_dataset` ("planted", "ctr", scale=…, …) encodes the columns like
any other dataset (ids by descending training frequency, seeded 7:2:1 split) and returns
a :class:`PlantedDataset`, whose ``planted_dims`` gives r per encoded id.
:func:`recovery` scores an allocation (kept dims per id) against it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from mixemb.data.encoder import FeatureEncoder
from mixemb.data.schema import Dataset

BASES = ("axis", "field")
DIMS_LAWS = ("field", "hump")
NO_PLANTED_DIM = -1  # planted_dims of an OOV id: it stands for no one value


@dataclass
class PlantedData:
    """Generated raw columns and the planted truth.

    columns: ``C1`` … ``C<F>`` (n,) object arrays of str, ``label`` (n,) float64 in {0, 1}.
    values: per field, (card_f,) object array of its raw value strings (index v = raw value v).
    dims: per field, (card_f,) int64 planted dimension r of raw value v, in [0, dim].
    field_means: (F,) float64 the m_f of each field (r ~ Binomial(dim, m_f) under the
        "field" law).
    dim: K, the largest planted dimension.
    """

    columns: dict[str, np.ndarray]
    field_names: list[str]
    cardinalities: list[int]
    values: list[np.ndarray]
    dims: list[np.ndarray]
    field_means: np.ndarray
    dim: int


@dataclass
class PlantedDataset(Dataset):
    """A :class:`Dataset` with the planted truth.

    planted_dims: (N,) int64, r of the value behind each encoded id; -1
        (``NO_PLANTED_DIM``) for the fields' OOV ids.
    """

    planted_dims: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64))

    def per_id_fields(self, new_of_old: torch.Tensor) -> dict:
        """``planted_dims`` permuted to new ids: new id new_of_old[i] gets r of old id i."""
        dims = torch.empty_like(self.planted_dims)
        dims[new_of_old] = self.planted_dims
        return {"planted_dims": dims}


def field_cardinalities(
    num_fields: int, scale: float, min_cardinality: int, max_cardinality: int
) -> list[int]:
    """(F,) cardinalities on a geometric ladder from ``min_cardinality`` to
    ``max(min_cardinality, round(max_cardinality · scale))``, smallest first."""
    if num_fields < 2:
        raise ValueError(f"num_fields must be >= 2, got {num_fields}")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    if not 1 <= min_cardinality <= max_cardinality:
        raise ValueError(
            f"need 1 <= min_cardinality <= max_cardinality, got {min_cardinality}, "
            f"{max_cardinality}"
        )
    top = max(min_cardinality, round(max_cardinality * scale))
    return [int(c) for c in np.round(np.geomspace(min_cardinality, top, num_fields))]


def make_planted(
    num_rows: int = 200_000,
    num_fields: int = 26,
    dim: int = 32,
    scale: float = 1.0,
    min_cardinality: int = 3,
    max_cardinality: int = 1_000_000,
    zipf_exponent: float = 1.1,
    basis: str = "axis",
    dims_law: str = "field",
    signal: float = 2.0,
    bias: float = -1.0,
    noise: float = 0.0,
    seed: int = 0,
) -> PlantedData:
    """Generate the planted CTR data (see the module docstring); deterministic in ``seed``.

    dim: K, the largest planted dimension (r_i in [0, K]). signal: the standard deviation
    of the pairwise term in the logit. bias: the logit's constant (-1: about 30 % clicks
    at signal 2). noise: standard deviation of Gaussian noise added to the logit (the
    Bernoulli draw is noise already).
    """
    if min(num_rows, dim) < 1:
        raise ValueError(f"num_rows and dim must be >= 1, got {num_rows}, {dim}")
    if dims_law not in DIMS_LAWS:
        raise ValueError(f"dims_law must be one of {', '.join(DIMS_LAWS)}, got {dims_law!r}")
    if basis not in BASES:
        raise ValueError(f"basis must be one of {', '.join(BASES)}, got {basis!r}")
    if min(zipf_exponent, signal, noise) < 0:
        raise ValueError(
            f"zipf_exponent, signal and noise must be >= 0, got {zipf_exponent}, {signal}, {noise}"
        )
    cards = field_cardinalities(num_fields, scale, min_cardinality, max_cardinality)
    rng = np.random.default_rng(seed)
    means = rng.permutation(np.linspace(0.0, 1.0, num_fields))
    names = [f"C{j + 1}" for j in range(num_fields)]
    probs = [np.arange(1, c + 1, dtype=np.float64) ** -zipf_exponent for c in cards]
    probs = [p / p.sum() for p in probs]
    # z: every value's rank by expected frequency over all fields, as a fraction
    flat = np.concatenate(probs)
    z_all = np.empty(len(flat))
    z_all[np.argsort(-flat, kind="stable")] = np.arange(len(flat)) / max(len(flat) - 1, 1)
    z_of = np.split(z_all, np.cumsum(cards)[:-1])
    columns: dict[str, np.ndarray] = {}
    values, dims = [], []
    # Σ_{f<g} <u_f, u_g> = (|Σ_f u_f|² − Σ_f |u_f|²) / 2, one field at a time
    total = np.zeros((num_rows, dim))
    squares = np.zeros(num_rows)
    for j, (name, card, p) in enumerate(zip(names, cards, probs)):
        cdf = np.cumsum(p)
        idx = np.minimum(np.searchsorted(cdf, rng.random(num_rows) * cdf[-1], "right"), card - 1)
        if dims_law == "field":
            frac = np.full(card, means[j])
        else:
            frac = 4 * z_of[j] * (1 - z_of[j])
        r = rng.binomial(dim, frac).astype(np.int64)
        u = rng.standard_normal((card, dim))
        u *= np.arange(dim) < r[:, None]  # value v's signal on its first r_v coordinates
        if basis == "field":
            q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
            u = u @ q.T
        rows = u[idx]
        total += rows
        squares += np.einsum("nk,nk->n", rows, rows)
        # value v's string is a random relabelling, so raw strings say nothing of frequency
        labels = np.array([f"{j + 1}:{h}" for h in rng.permutation(card).tolist()], dtype=object)
        columns[name] = labels[idx]
        values.append(labels)
        dims.append(r)
    pair = (np.einsum("nk,nk->n", total, total) - squares) / 2
    spread = pair.std()
    logit = bias + signal * (pair / spread if spread > 0 else pair)
    logit += noise * rng.standard_normal(num_rows)
    prob = 1.0 / (1.0 + np.exp(-logit))
    columns["label"] = (rng.random(num_rows) < prob).astype(np.float64)
    return PlantedData(columns, names, cards, values, dims, means, dim)


def planted_dims_by_id(encoder: FeatureEncoder, data: PlantedData) -> torch.Tensor:
    """(N,) int64 planted r per encoded id of ``encoder`` (fit on ``data``'s columns);
    ``NO_PLANTED_DIM`` for the OOV ids (values unseen in training or rarer than
    ``min_count`` share them)."""
    out = np.full(encoder.num_features, NO_PLANTED_DIM, dtype=np.int64)
    for name, labels, r in zip(data.field_names, data.values, data.dims):
        gids = encoder.ids_of(name, labels)
        seen = gids != encoder.oov_id(name)
        out[gids[seen]] = r[seen]
    return torch.from_numpy(out)


# ---- scoring an allocation against the planted dims ------------------------------------
def rankdata(x: np.ndarray) -> np.ndarray:
    """(n,) float64 ranks 0 … n−1 of ``x`` (n,), ties given their average rank."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    order = np.argsort(x, kind="stable")
    srt = x[order]
    starts = np.r_[True, srt[1:] != srt[:-1]] if len(x) else np.zeros(0, dtype=bool)
    first = np.flatnonzero(starts)
    counts = np.diff(np.r_[first, len(x)])
    group = np.cumsum(starts) - 1
    ranks = np.empty(len(x))
    ranks[order] = (first + (counts - 1) / 2)[group]
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of ``a`` and ``b`` (n,) (ties averaged); NaN when n < 2
    or either is constant."""
    a, b = np.asarray(a).reshape(-1), np.asarray(b).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same length, got {a.shape} and {b.shape}")
    if len(a) < 2:
        return float("nan")
    ra, rb = rankdata(a) - (len(a) - 1) / 2, rankdata(b) - (len(b) - 1) / 2
    den = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / den) if den > 0 else float("nan")


def recovery(
    kept: torch.Tensor | np.ndarray,
    planted: torch.Tensor | np.ndarray,
    frequencies: torch.Tensor | np.ndarray,
    boundaries: Sequence[int] | torch.Tensor,
    min_count: int = 20,
    field_of_id: torch.Tensor | np.ndarray | None = None,
) -> dict:
    """How well an allocation ``kept`` (N,) (dims per encoded id) recovers ``planted``
    (N,) r (-1 for ids without one), with the training ``frequencies`` (N,) and the
    α blocks' ``boundaries`` (L+1,).

    Returns block (Spearman of the L block means of kept and of r, over the ids with an
    r; a block with none is left out), feature (Spearman over the ids with an r seen at
    least ``min_count`` times in training), features (their count), and
    feature_vs_frequency (Spearman of kept and frequency over the same ids: how much of
    the allocation just follows frequency). With ``field_of_id`` (N,) int: also field
    (Spearman of the fields' means of kept and of r, over the ids with an r) and the
    means themselves.
    """
    kept = np.asarray(kept, dtype=np.float64)
    planted = np.asarray(planted, dtype=np.int64)
    freq = np.asarray(frequencies, dtype=np.float64)
    if not kept.shape == planted.shape == freq.shape:
        raise ValueError(
            f"kept, planted and frequencies must all be (N,), got {kept.shape}, "
            f"{planted.shape}, {freq.shape}"
        )
    has = planted != NO_PLANTED_DIM
    b = [int(x) for x in boundaries]
    block_kept, block_r = [], []
    for lo, hi in zip(b[:-1], b[1:]):
        m = has[lo:hi]
        if m.any():
            block_kept.append(kept[lo:hi][m].mean())
            block_r.append(planted[lo:hi][m].mean())
    sel = has & (freq >= min_count)
    per_field = {}
    if field_of_id is not None:
        fld = np.asarray(field_of_id, dtype=np.int64)
        if fld.shape != kept.shape:
            raise ValueError(f"field_of_id must be (N,) = {kept.shape}, got {fld.shape}")
        fields = [f for f in np.unique(fld[has])]
        field_kept = [float(kept[has & (fld == f)].mean()) for f in fields]
        field_r = [float(planted[has & (fld == f)].mean()) for f in fields]
        per_field = {
            "field": spearman(np.array(field_kept), np.array(field_r)),
            "field_mean_kept": field_kept,
            "field_mean_planted": field_r,
        }
    return {
        **per_field,
        "block": spearman(np.array(block_kept), np.array(block_r)),
        "block_mean_kept": [float(x) for x in block_kept],
        "block_mean_planted": [float(x) for x in block_r],
        "feature": spearman(kept[sel], planted[sel]),
        "features": int(sel.sum()),
        "feature_vs_frequency": spearman(kept[sel], freq[sel]),
    }
