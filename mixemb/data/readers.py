"""Readers for the files users bring, streamed in chunks of rows.

Every reader yields :class:`Chunk` objects — raw columns as numpy arrays (strings as
``str`` arrays, numbers as float64) plus the 1-based line number of the chunk's first
row — so that a multi-GB Criteo file is never held in memory as text, and every error
names the file, the line and the offending value::

    ratings.dat line 12: rating 'x' is not a number
"""

from __future__ import annotations

import io
import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mixemb.data.schema import DataError

DEFAULT_CHUNK_ROWS = 1_000_000
CRITEO_INT = [f"I{i}" for i in range(1, 14)]
CRITEO_CAT = [f"C{i}" for i in range(1, 27)]


@dataclass
class Chunk:
    """Rows ``first_line`` … of ``source``: column name → (n,) array."""

    columns: dict[str, np.ndarray]
    first_line: int
    source: str

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0


Source = str | Path | tuple[str, bytes]


def _open_text(source: Source) -> tuple[io.TextIOBase, str]:
    """A text stream and a display name (file name, or ``wheel!member`` for bytes)."""
    if isinstance(source, tuple):
        name, data = source
        return io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors="replace"), name
    path = Path(source)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    return open(path, encoding="utf-8", errors="replace", newline=None), path.name


def _to_float(
    raw: Sequence[str], name: str, column: str, first_line: int, allow_missing: bool
) -> np.ndarray:
    try:
        if allow_missing:
            return np.array([float(x) if x != "" else math.nan for x in raw], dtype=np.float64)
        return np.asarray(raw, dtype=np.float64)
    except ValueError:
        for i, x in enumerate(raw):
            if allow_missing and x == "":
                continue
            try:
                float(x)
            except ValueError:
                raise DataError(
                    f"{name} line {first_line + i}: {column} {x!r} is not a number"
                ) from None
        raise


def read_delimited(
    source: Source,
    *,
    sep: str,
    columns: Sequence[str] | None = None,
    header: bool = False,
    numeric: Sequence[str] = (),
    allow_missing: Sequence[str] = (),
    binary: Sequence[str] = (),
    keep: Sequence[str] | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    strip_types: bool = False,
) -> Iterator[Chunk]:
    """Stream a delimited text file as chunks.

    columns: column names when the file has no header. header: names come from line 1
        (``strip_types`` drops RecBole's ``:type`` suffix).
    numeric: columns parsed as float64 (``allow_missing``: empty → NaN).
    binary: numeric columns that must be 0 or 1 (labels).
    keep: the columns to return (default all); a missing one is an error naming it.
    """
    stream, name = _open_text(source)
    with stream:
        line_no = 1
        if header:
            first = stream.readline()
            if not first.strip():
                raise DataError(f"{name} line 1: empty file, no header and no data rows")
            columns = [c.strip() for c in first.rstrip("\r\n").split(sep)]
            if strip_types:
                columns = [c.split(":", 1)[0] for c in columns]
            line_no = 2
        assert columns is not None
        ncols = len(columns)
        wanted = list(keep) if keep is not None else list(columns)
        for col in wanted + list(numeric):
            if col not in columns:
                raise DataError(f"{name} line 1: no column {col!r} (columns: {', '.join(columns)})")
        index = {c: i for i, c in enumerate(columns)}
        rows_seen = 0
        while True:
            lines = list(itertools.islice(stream, chunk_rows))
            if not lines:
                break
            rows = []
            for i, line in enumerate(lines):
                line = line.rstrip("\r\n")
                if not line.strip():
                    continue  # blank lines (a trailing newline) carry no row
                parts = line.split(sep)
                if len(parts) != ncols:
                    raise DataError(
                        f"{name} line {line_no + i}: expected {ncols} columns, got "
                        f"{len(parts)}: {line[:80]!r}"
                    )
                rows.append(parts)
            first_line = line_no
            line_no += len(lines)
            if not rows:
                continue
            rows_seen += len(rows)
            out: dict[str, np.ndarray] = {}
            transposed = list(zip(*rows))
            for col in wanted:
                raw = transposed[index[col]]
                if col in numeric:
                    values = _to_float(raw, name, col, first_line, col in allow_missing)
                    if col in binary:
                        bad = np.flatnonzero((values != 0) & (values != 1))
                        if bad.size:
                            j = int(bad[0])
                            raise DataError(
                                f"{name} line {first_line + j}: {col} {raw[j]!r} is not 0 or 1"
                            )
                    out[col] = values
                else:
                    out[col] = np.array(raw, dtype=str)
            yield Chunk(out, first_line, name)
        if rows_seen == 0:
            raise DataError(f"{name} line {line_no}: empty file, no data rows")


INTERACTION_COLUMNS = ["user_id", "item_id", "rating", "timestamp"]


def read_movielens(source: str | Path, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[Chunk]:
    """MovieLens originals: ``u.data`` (tab), ``ratings.dat`` (``::``), ``ratings.csv``
    (header userId,movieId,rating,timestamp). Yields user_id, item_id, rating, timestamp."""
    path = Path(source)
    numeric = ("rating", "timestamp")
    if path.suffix == ".csv":
        for chunk in read_delimited(
            path,
            sep=",",
            header=True,
            numeric=("rating", "timestamp"),
            keep=["userId", "movieId", "rating", "timestamp"],
            chunk_rows=chunk_rows,
        ):
            cols = chunk.columns
            chunk.columns = {
                "user_id": cols["userId"],
                "item_id": cols["movieId"],
                "rating": cols["rating"],
                "timestamp": cols["timestamp"],
            }
            yield chunk
        return
    sep = "::" if path.suffix == ".dat" else "\t"
    yield from read_delimited(
        path, sep=sep, columns=INTERACTION_COLUMNS, numeric=numeric, chunk_rows=chunk_rows
    )


def read_recbole(
    source: Source, numeric: Sequence[str] = (), chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> Iterator[Chunk]:
    """RecBole atomic files (``.inter``, ``.user``, ``.item``): tab-separated, header
    ``name:type``; the suffix is dropped from column names."""
    yield from read_delimited(
        source, sep="\t", header=True, strip_types=True, numeric=numeric, chunk_rows=chunk_rows
    )


def read_criteo(source: str | Path, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[Chunk]:
    """Criteo TSV: label, I1..I13 (integers, empty = NaN), C1..C26 (hex, empty = "")."""
    yield from read_delimited(
        source,
        sep="\t",
        columns=["label", *CRITEO_INT, *CRITEO_CAT],
        numeric=["label", *CRITEO_INT],
        allow_missing=CRITEO_INT,
        binary=["label"],
        chunk_rows=chunk_rows,
    )


def read_csv(
    source: str | Path,
    *,
    label: str,
    categorical: Sequence[str] = (),
    numeric: Sequence[str] = (),
    delimiter: str = ",",
    binary_label: bool = False,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> Iterator[Chunk]:
    """A CSV/TSV with a header; the caller names the label, categorical and numeric columns
    (numeric: empty = missing)."""
    if not categorical and not numeric:
        raise DataError(f"{Path(source).name}: name at least one categorical or numeric column")
    yield from read_delimited(
        source,
        sep=delimiter,
        header=True,
        numeric=[label, *numeric],
        allow_missing=list(numeric),
        binary=[label] if binary_label else [],
        keep=[label, *categorical, *numeric],
        chunk_rows=chunk_rows,
    )


def concat_chunks(chunks: Iterator[Chunk]) -> dict[str, np.ndarray]:
    """All chunks as one dict of columns (for files that fit in memory)."""
    parts: dict[str, list[np.ndarray]] = {}
    for chunk in chunks:
        for k, v in chunk.columns.items():
            parts.setdefault(k, []).append(v)
    return {k: np.concatenate(v) for k, v in parts.items()}
