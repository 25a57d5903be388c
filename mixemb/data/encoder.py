"""``FeatureEncoder``: raw column values → global feature ids ordered by training frequency.

All fields share one id space. Ids are assigned by descending frequency in the
**training** rows (id 0 = the most frequent feature of any field), so a DNIS frequency
block is a contiguous id range. Ties are broken by field order, then by value string.
Each categorical field has its own OOV id, used for values seen fewer than
``min_count`` times, for unseen values and for missing ("") values; its frequency is
the count of the rare values, and it is sorted in with the rest.

Numeric fields either *scale* (one id per field whose embedding is multiplied by the
transformed value, the Criteo convention v = log(x)² for x > 2, else x; missing → 0)
or are *bucketized* into categorical bucket labels (missing → OOV).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from mixemb.data.schema import DataError, FieldSpec

NUMERIC_MODES = ("scale", "bucketize")


def criteo_transform(x: np.ndarray) -> np.ndarray:
    """log(x)² for x > 2, x otherwise; NaN (missing) → 0."""
    x = np.asarray(x, dtype=np.float64)
    out = np.where(x > 2, np.log(np.maximum(x, 2)) ** 2, x)
    return np.nan_to_num(out, nan=0.0)


def bucket_labels(x: np.ndarray) -> np.ndarray:
    """Bucket label strings of numeric values: floor(log(x)²) for x > 2, int(x) otherwise;
    missing (NaN) → "" (the field's OOV)."""
    x = np.asarray(x, dtype=np.float64)
    missing = np.isnan(x)
    safe = np.where(missing, 0.0, x)
    b = np.where(safe > 2, np.floor(np.log(np.maximum(safe, 2)) ** 2), np.trunc(safe))
    labels = b.astype(np.int64).astype(str)
    labels[missing] = ""
    return labels


class FeatureEncoder:
    """Fit on training rows, then map raw rows to ``(ids int32 (n, F), values float32 (n, F))``.

    fields: the input columns, in order (the order of the F columns of ``ids``).
    min_count: values seen fewer times in training map to their field's OOV id.
    numeric_mode: "scale" or "bucketize" for numeric fields.
    """

    def __init__(
        self, fields: Sequence[FieldSpec], min_count: int = 1, numeric_mode: str = "scale"
    ) -> None:
        if numeric_mode not in NUMERIC_MODES:
            raise ValueError(f"numeric_mode must be scale or bucketize, got {numeric_mode!r}")
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        self.fields = list(fields)
        self.min_count = int(min_count)
        self.numeric_mode = numeric_mode
        self._tables: list[dict[str, int]] = []  # per field: raw value -> global id
        self._oov: list[int] = []  # per field: OOV id (or the field's id for scale-numeric)
        self.frequencies = np.zeros(0, dtype=np.int64)
        self.field_of_id = np.zeros(0, dtype=np.int64)
        self._values_of_id: list[str] = []

    # ---- fitting ----------------------------------------------------------------------
    def _is_scaled(self, f: FieldSpec) -> bool:
        return f.kind == "numeric" and self.numeric_mode == "scale"

    def _categorical_column(self, f: FieldSpec, col: np.ndarray) -> np.ndarray:
        return bucket_labels(col) if f.kind == "numeric" else np.asarray(col).astype(str)

    def _column(self, chunk: dict[str, np.ndarray], f: FieldSpec) -> np.ndarray:
        if f.name not in chunk:
            raise DataError(f"missing column {f.name!r} (have: {', '.join(chunk)})")
        return chunk[f.name]

    def fit(self, chunks: Iterable[dict[str, np.ndarray]]) -> FeatureEncoder:
        """Count value frequencies over the given (training) chunks and assign ids."""
        counts: list[dict[str, int]] = [{} for _ in self.fields]
        present = [0] * len(self.fields)
        for chunk in chunks:
            for j, f in enumerate(self.fields):
                col = self._column(chunk, f)
                if self._is_scaled(f):
                    present[j] += int((~np.isnan(np.asarray(col, dtype=np.float64))).sum())
                    continue
                values, n = np.unique(self._categorical_column(f, col), return_counts=True)
                c = counts[j]
                for v, k in zip(values.tolist(), n.tolist()):
                    c[v] = c.get(v, 0) + k
        # (-count, field, kind: 0 value / 1 OOV, value) gives a deterministic total order.
        entries: list[tuple[int, int, int, str]] = []
        for j, f in enumerate(self.fields):
            if self._is_scaled(f):
                entries.append((-present[j], j, 1, ""))
                continue
            rare = 0
            for v, k in counts[j].items():
                if k >= self.min_count and v != "":
                    entries.append((-k, j, 0, v))
                else:
                    rare += k
            entries.append((-rare, j, 1, ""))
        entries.sort()
        self._tables = [{} for _ in self.fields]
        self._oov = [-1] * len(self.fields)
        self._values_of_id = []
        for gid, (_, j, is_oov, v) in enumerate(entries):
            if is_oov:
                self._oov[j] = gid
            else:
                self._tables[j][v] = gid
            self._values_of_id.append(v)
        self.frequencies = np.array([-e[0] for e in entries], dtype=np.int64)
        self.field_of_id = np.array([e[1] for e in entries], dtype=np.int64)
        return self

    # ---- transforming -----------------------------------------------------------------
    @property
    def num_features(self) -> int:
        return len(self.frequencies)

    def _check_fitted(self) -> None:
        if not self._oov:
            raise RuntimeError("FeatureEncoder.transform before fit")

    def transform(self, chunk: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        """ids (n, F) int32 and values (n, F) float32 (None when no field scales)."""
        self._check_fitted()
        n = len(self._column(chunk, self.fields[0]))
        ids = np.empty((n, len(self.fields)), dtype=np.int32)
        scaled = any(self._is_scaled(f) for f in self.fields)
        values = np.ones((n, len(self.fields)), dtype=np.float32) if scaled else None
        for j, f in enumerate(self.fields):
            col = self._column(chunk, f)
            if self._is_scaled(f):
                ids[:, j] = self._oov[j]
                values[:, j] = criteo_transform(col)
                continue
            uniq, inverse = np.unique(self._categorical_column(f, col), return_inverse=True)
            table, oov = self._tables[j], self._oov[j]
            mapped = np.array([table.get(v, oov) for v in uniq.tolist()], dtype=np.int32)
            ids[:, j] = mapped[inverse.reshape(-1)] if n else mapped[:0]
        return ids, values

    def id_of(self, field: str, raw) -> int:
        """Global id of ``raw`` in ``field`` (its OOV id if unknown)."""
        self._check_fitted()
        j = [f.name for f in self.fields].index(field)
        f = self.fields[j]
        if self._is_scaled(f):
            return self._oov[j]
        key = str(bucket_labels(np.array([raw]))[0]) if f.kind == "numeric" else str(raw)
        return self._tables[j].get(key, self._oov[j])

    def oov_id(self, field: str) -> int:
        return self._oov[[f.name for f in self.fields].index(field)]

    def decode(self, gid: int) -> tuple[str, str | None]:
        """(field name, raw value) of a global id; the value is None for OOV / scaled ids."""
        j = int(self.field_of_id[gid])
        is_special = self._oov[j] == gid
        return self.fields[j].name, None if is_special else self._values_of_id[gid]

    # ---- saving -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Only lists, str, int and tensors: loads with ``torch.load(weights_only=True)``."""
        self._check_fitted()
        return {
            "fields": [[f.name, f.kind] for f in self.fields],
            "min_count": self.min_count,
            "numeric_mode": self.numeric_mode,
            "values_of_id": list(self._values_of_id),
            "oov": list(self._oov),
            "frequencies": torch.from_numpy(self.frequencies.copy()),
            "field_of_id": torch.from_numpy(self.field_of_id.copy()),
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> FeatureEncoder:
        enc = cls(
            [FieldSpec(n, k) for n, k in state["fields"]], state["min_count"], state["numeric_mode"]
        )
        enc.frequencies = np.asarray(state["frequencies"], dtype=np.int64)
        enc.field_of_id = np.asarray(state["field_of_id"], dtype=np.int64)
        enc._values_of_id = list(state["values_of_id"])
        enc._oov = list(state["oov"])
        enc._tables = [{} for _ in enc.fields]
        special = set(enc._oov)
        for gid, (j, v) in enumerate(zip(enc.field_of_id.tolist(), enc._values_of_id)):
            if gid not in special:
                enc._tables[j][v] = gid
        return enc

    def __repr__(self) -> str:
        return (
            f"FeatureEncoder({len(self.fields)} fields, {self.num_features} features, "
            f"min_count={self.min_count}, numeric_mode={self.numeric_mode!r})"
        )
