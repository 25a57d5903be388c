"""Readers for the files users bring, streamed in chunks of rows.

Every reader yields :class:`Chunk` objects — raw columns as numpy arrays (strings as
``object`` arrays of ``str``, numbers as float64) plus the 1-based line number of the
chunk's first row — so that a multi-GB Criteo file is never held in memory as text,
and every error names the file, the line and the offending value::

    ratings.dat line 12: rating 'x' is not a number

Parsing is vectorised per chunk: the text is read in large blocks, column counts are
checked for all lines at once, and each line is split by one ``str.split`` over the
whole chunk (1M MovieLens lines take well under a second). The default chunk holds
1M rows, capped at 8M cells (Criteo's 40 columns: 200,000 rows, about 1.5 GB of Python
strings at a time). Generic CSV files may quote fields (``"Toy Story, The"``); a quoted
field may not span lines.

What a reader rejects, each as a one-line :class:`DataError` that names the file, the
line and the value (quoted values cut to 80 characters):

* bytes that are not UTF-8 (a leading BOM is skipped): text is decoded strictly, never
  with replacement characters, so two ids that differ only in such bytes cannot merge;
* a quoted field still open at the end of its line (csv would join it with the next);
* a numeric value that does not parse, is ``nan`` or ``inf``, or lies outside
  ±:data:`MAX_ABS_VALUE` (float32's range, where every value ends up); rating labels
  (MovieLens ``rating``, a CSV label) outside ±:data:`MAX_ABS_LABEL`. A *missing* number
  is an empty field, allowed only where a reader says so (Criteo I1..I13, the ``numeric``
  columns of a CSV) and returned as NaN; the text ``nan`` is not a missing value;
* a data file that is a directory or not a regular file.
"""

from __future__ import annotations

import csv
import io
import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mixemb.data.schema import DataError, clipped, quoted

DEFAULT_CHUNK_ROWS = 1_000_000
DEFAULT_CHUNK_CELLS = 8_000_000
CRITEO_INT = [f"I{i}" for i in range(1, 14)]
CRITEO_CAT = [f"C{i}" for i in range(1, 27)]
INTERACTION_COLUMNS = ["user_id", "item_id", "rating", "timestamp"]
_BLOCK_CHARS = 1 << 24
# Every number becomes float32 downstream: a larger magnitude would turn into inf there.
MAX_ABS_VALUE = float(np.finfo(np.float32).max)
# Rating labels: float32 still resolves 1e6 to within 0.06, and a squared error of a batch
# stays far inside float32; a larger "rating" is a unit or parsing mistake.
MAX_ABS_LABEL = 1e6


@dataclass
class Chunk:
    """Rows of ``source`` starting at 1-based line ``first_line``: column name → (n,) array.

    line_numbers: the source line of every row when blank lines were skipped inside the
        chunk (None when rows are consecutive lines from ``first_line``).
    """

    columns: dict[str, np.ndarray]
    first_line: int
    source: str
    line_numbers: np.ndarray | None = None

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def line_of(self, row: int) -> int:
        """Source line number of row ``row`` of this chunk."""
        if self.line_numbers is not None:
            return int(self.line_numbers[row])
        return self.first_line + int(row)


Source = str | Path | tuple[str, bytes]


def check_data_file(path: str | Path) -> Path:
    """``path`` as a Path when it is a regular file; else a DataError saying what it is."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a data file")
    if path.exists():
        raise DataError(f"{path}: not a regular file")
    raise DataError(f"{path}: no such file")


def _open_text(source: Source, errors: str = "strict") -> tuple[io.TextIOBase, str]:
    """A text stream (universal newlines: CRLF → LF) and a display name (file name, or
    ``wheel!member`` for in-memory bytes). Decoding is strict UTF-8: a read that meets
    other bytes raises UnicodeDecodeError, which :func:`_read` turns into a DataError."""
    if isinstance(source, tuple):
        name, data = source
        stream = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig", errors=errors)
        return stream, name
    path = check_data_file(source)
    return open(path, encoding="utf-8-sig", errors=errors, newline=None), path.name


def _not_utf8(source: Source) -> DataError:
    """The DataError for the first line of ``source`` that holds bytes other than UTF-8,
    quoting them. A second pass, made only after strict decoding failed, so that valid
    files pay nothing: it decodes bad bytes to lone surrogates (``surrogateescape``),
    which only re-encoding finds."""
    stream, name = _open_text(source, errors="surrogateescape")
    line = 1
    carry = ""
    with stream:
        while block := stream.read(_BLOCK_CHARS):
            text = carry + block
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                start = text.rfind("\n", 0, exc.start) + 1
                end = text.find("\n", exc.start)
                end = len(text) if end < 0 else end
                lo = max(start, exc.start - 40)  # the bad bytes, not only the line's start
                raw = text[lo : min(end, lo + 80)].encode("utf-8", "surrogateescape")
                shown = ("…" if lo > start else "") + quoted(raw) + ("…" if end > lo + 80 else "")
                line += text.count("\n", 0, exc.start)
                return DataError(f"{name} line {line}: bytes that are not UTF-8: {shown}")
            cut = text.rfind("\n") + 1
            line += text.count("\n", 0, cut)
            carry = text[cut:]
    return DataError(f"{name}: bytes that are not UTF-8")


def _read(stream: io.TextIOBase, source: Source, size: int = -1, line: bool = False) -> str:
    """``stream.read(size)`` (``readline()`` when ``line``), bytes that are not UTF-8
    reported as a DataError naming their line."""
    try:
        return stream.readline() if line else stream.read(size)
    except UnicodeDecodeError:
        raise _not_utf8(source) from None


def _line_blocks(stream: io.TextIOBase, chunk_rows: int, source: Source) -> Iterator[list[str]]:
    """Lists of at most ``chunk_rows`` lines (without their newline), in file order."""
    pending: list[str] = []
    carry = ""
    while True:
        block = _read(stream, source, _BLOCK_CHARS)
        if not block:
            if carry:
                pending.append(carry)
            break
        lines = (carry + block).split("\n")
        carry = lines.pop()
        pending.extend(lines)
        while len(pending) >= chunk_rows:
            yield pending[:chunk_rows]
            pending = pending[chunk_rows:]
    if pending:
        yield pending


def default_chunk_rows(num_columns: int) -> int:
    """1M rows, or fewer so that a chunk holds at most 8M cells."""
    return max(1, min(DEFAULT_CHUNK_ROWS, DEFAULT_CHUNK_CELLS // max(1, num_columns)))


def _split_line(line: str, sep: str, quotechar: str | None, name: str, line_no: int) -> list[str]:
    if quotechar and quotechar in line:
        return _split_quoted([line], sep, quotechar, name, line_no)[0]
    return line.split(sep)


def _split_quoted(
    lines: list[str], sep: str, quotechar: str, name: str, first_line: int
) -> list[list[str]]:
    """The field lists of ``lines`` (one per line, ``[]`` for a blank one), honouring
    quotes. A quoted field still open at the end of its line is a DataError: csv would
    join it with the next line (and shift every later row), so an empty sentinel line is
    parsed last, and one row fewer than lines + 1 means some field ran over."""
    reader = csv.reader(itertools.chain(lines, ("",)), delimiter=sep, quotechar=quotechar)
    try:
        rows = list(reader)
    except csv.Error:  # e.g. a field over csv's size limit; located below
        rows = []
    if len(rows) == len(lines) + 1:
        rows.pop()
        return rows
    reader = csv.reader(itertools.chain(lines, ("",)), delimiter=sep, quotechar=quotechar)
    for row in range(len(lines) + 1):
        try:
            next(reader)
        except csv.Error as exc:
            if reader.line_num > row + 1:
                break
            raise DataError(
                f"{name} line {first_line + row}: {exc}: {quoted(lines[row])}"
            ) from None
        if reader.line_num != row + 1:
            break
    raise DataError(
        f"{name} line {first_line + row}: quoted field not closed on its line (a quoted "
        f"field may not span lines): {quoted(lines[row])}"
    )


def _floats(
    raw: list[str], chunk: Chunk, column: str, allow_missing: bool, limit: float
) -> np.ndarray:
    """float64 column of ``raw``; "" is NaN (missing) when ``allow_missing``; any other
    value that does not parse, is NaN or infinite, or exceeds ``limit`` in absolute value
    is a DataError."""
    try:
        values = np.array([x or "nan" for x in raw] if allow_missing else raw, dtype=np.float64)
    except ValueError:
        for j, x in enumerate(raw):
            if allow_missing and x == "":
                continue
            try:
                float(x)
            except ValueError:
                raise DataError(
                    f"{chunk.source} line {chunk.line_of(j)}: {column} {quoted(x)} is not a number"
                ) from None
        raise AssertionError("unreachable: a value failed to parse, none found") from None
    in_range = np.abs(values) <= limit  # False for NaN and inf too
    if in_range.all():
        return values
    bad = np.flatnonzero(~in_range)
    # every "" became NaN: when the bad values are exactly as many, they are the missing ones
    if allow_missing and bad.size == raw.count(""):
        return values
    j = next(j for j in bad.tolist() if raw[j] != "")
    v = values[j]
    what = (
        "is not a number"
        if np.isnan(v)
        else "is not finite"
        if np.isinf(v)
        else f"is out of range (|{column}| must be at most {limit:g})"
    )
    raise DataError(f"{chunk.source} line {chunk.line_of(j)}: {column} {quoted(raw[j])} {what}")


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
    chunk_rows: int | None = None,
    strip_types: bool = False,
    quotechar: str | None = None,
    limits: Mapping[str, float] | None = None,
) -> Iterator[Chunk]:
    """Stream a delimited text file as chunks of at most ``chunk_rows`` rows (default:
    :func:`default_chunk_rows` of the column count).

    columns: column names when the file has no header. header: names come from line 1
        (``strip_types`` drops RecBole's ``:type`` suffix).
    numeric: columns parsed as float64 (``allow_missing``: empty → NaN; otherwise an
        empty value is an error); a non-numeric, NaN or infinite value is always one.
    limits: numeric column → the largest |value| it accepts (default, and for columns not
        named: :data:`MAX_ABS_VALUE`).
    binary: numeric columns that must be 0 or 1 (labels).
    keep: the columns to return (default all); a missing one is an error naming it.
    quotechar: fields may be quoted with it (CSV style; single-character ``sep`` only).
    Blank lines are skipped; a file without data rows is an error.
    """
    if chunk_rows is not None and chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    if quotechar is not None and len(sep) != 1:
        raise ValueError("quoted fields need a one-character separator")
    stream, name = _open_text(source)
    with stream:
        line_no = 1
        if header:
            first = _read(stream, source, line=True)
            if not first.strip():
                raise DataError(f"{name} line 1: empty file, no header and no data rows")
            fields = _split_line(first.rstrip("\r\n"), sep, quotechar, name, 1)
            columns = [c.strip() for c in fields]
            if strip_types:
                columns = [c.split(":", 1)[0] for c in columns]
            line_no = 2
        if columns is None:
            raise ValueError("read_delimited needs columns= or header=True")
        columns = list(columns)
        ncols = len(columns)
        if chunk_rows is None:
            chunk_rows = default_chunk_rows(ncols)
        wanted = list(keep) if keep is not None else list(columns)
        for col in dict.fromkeys(wanted + list(numeric)):
            if col not in columns:
                listing = clipped(", ".join(columns))
                raise DataError(f"{name} line 1: no column {col!r} (columns: {listing})")
        index = {c: i for i, c in enumerate(columns)}
        limit_of = {c: MAX_ABS_VALUE for c in numeric} | dict(limits or {})
        numeric_set, missing_set, binary_set = set(numeric), set(allow_missing), set(binary)
        rows_seen = 0
        for lines in _line_blocks(stream, chunk_rows, source):
            first_line = line_no
            line_no += len(lines)
            n = len(lines)
            rows = None  # per-line field lists when quotes had to be honoured
            if quotechar is not None and any(quotechar in line for line in lines):
                rows = _split_quoted(lines, sep, quotechar, name, first_line)
                counts = np.fromiter((len(r) - 1 for r in rows), np.int64, n)
            else:
                counts = np.fromiter(map(str.count, lines, itertools.repeat(sep)), np.int64, n)
            if ncols == 1:
                bad = np.flatnonzero((counts != 0) | np.array([not s.strip() for s in lines]))
            else:
                bad = np.flatnonzero(counts != ncols - 1)
            line_numbers = None
            if bad.size:
                for b in bad.tolist():
                    if lines[b].strip():
                        raise DataError(
                            f"{name} line {first_line + b}: expected {ncols} columns, got "
                            f"{counts[b] + 1}: {quoted(lines[b])}"
                        )
                good = np.setdiff1d(np.arange(n), bad)
                lines = [lines[i] for i in good.tolist()]
                if rows is not None:
                    rows = [rows[i] for i in good.tolist()]
                line_numbers = first_line + good
            if not lines:
                continue
            rows_seen += len(lines)
            if rows is None:
                flat = sep.join(lines).split(sep)
            else:
                flat = list(itertools.chain.from_iterable(rows))
            chunk = Chunk({}, first_line, name, line_numbers)
            for col in wanted:
                raw = flat[index[col] :: ncols]
                if col in numeric_set:
                    values = _floats(raw, chunk, col, col in missing_set, limit_of[col])
                    if col in binary_set:
                        bad_label = np.flatnonzero((values != 0) & (values != 1))
                        if bad_label.size:
                            j = int(bad_label[0])
                            raise DataError(
                                f"{name} line {chunk.line_of(j)}: {col} {quoted(raw[j])} "
                                "is not 0 or 1"
                            )
                    chunk.columns[col] = values
                else:
                    chunk.columns[col] = np.array(raw, dtype=object)
            yield chunk
        if rows_seen == 0:
            raise DataError(f"{name} line {line_no}: empty file, no data rows")


def _sniff_movielens(path: Path) -> str:
    """ "dat", "csv" or "tab" from the file name, else from the first line."""
    name = path.name.lower()
    if name.endswith(".dat"):
        return "dat"
    if name.endswith(".csv"):
        return "csv"
    if name == "u.data" or name.endswith((".data", ".tsv")):
        return "tab"
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        first = f.readline()
    if "::" in first:
        return "dat"
    if first.lower().startswith("userid,"):
        return "csv"
    return "tab"


def read_movielens(source: str | Path, chunk_rows: int | None = None) -> Iterator[Chunk]:
    """MovieLens originals: ``u.data`` (tab), ``ratings.dat`` (``::``), ``ratings.csv``
    (header userId,movieId,rating,timestamp), told apart by file name or, failing that,
    by the first line. Yields user_id, item_id (str), rating, timestamp (float64); a
    rating must lie within ±:data:`MAX_ABS_LABEL`."""
    path = check_data_file(source)
    kind = _sniff_movielens(path)
    numeric = ("rating", "timestamp")
    limits = {"rating": MAX_ABS_LABEL}
    if kind == "csv":
        rename = {"userId": "user_id", "movieId": "item_id"}
        for chunk in read_delimited(
            path,
            sep=",",
            header=True,
            numeric=numeric,
            keep=["userId", "movieId", "rating", "timestamp"],
            chunk_rows=chunk_rows,
            limits=limits,
        ):
            chunk.columns = {rename.get(k, k): v for k, v in chunk.columns.items()}
            yield chunk
        return
    yield from read_delimited(
        path,
        sep="::" if kind == "dat" else "\t",
        columns=INTERACTION_COLUMNS,
        numeric=numeric,
        chunk_rows=chunk_rows,
        limits=limits,
    )


def read_recbole(
    source: Source,
    numeric: Sequence[str] = (),
    chunk_rows: int | None = None,
    required: Sequence[str] = (),
    limits: Mapping[str, float] | None = None,
) -> Iterator[Chunk]:
    """RecBole atomic files (``.inter``, ``.user``, ``.item``): tab-separated, header
    ``name:type`` (the suffix is dropped from column names), LF or CRLF line endings.
    numeric: columns parsed as float64 (they must exist); required: further columns that
    must exist; limits: as in :func:`read_delimited`. All columns are returned."""
    stream, name = _open_text(source)
    with stream:
        first = _read(stream, source, line=True)
    names = [c.strip().split(":", 1)[0] for c in first.rstrip("\r\n").split("\t")]
    if first.strip():
        for col in required:
            if col not in names:
                listing = clipped(", ".join(names))
                raise DataError(f"{name} line 1: no column {col!r} (columns: {listing})")
    yield from read_delimited(
        source,
        sep="\t",
        header=True,
        strip_types=True,
        numeric=numeric,
        chunk_rows=chunk_rows,
        limits=limits,
    )


def read_criteo(source: str | Path, chunk_rows: int | None = None) -> Iterator[Chunk]:
    """Criteo TSV without header: label (0/1), I1..I13 (numbers, empty → NaN = missing;
    ``nan``, ``inf`` are errors), C1..C26 (hex strings, empty → ""). Default chunks:
    200,000 rows."""
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
    chunk_rows: int | None = None,
    label_limit: float = MAX_ABS_LABEL,
) -> Iterator[Chunk]:
    """A CSV/TSV with a header; the caller names the label, categorical and numeric
    columns (numeric: empty = missing → NaN, ``nan``/``inf`` are errors; categorical:
    empty = missing → the field's OOV). Fields may be double-quoted (one-character
    delimiters), a quoted field within one line. ``binary_label``: the label must be 0
    or 1; otherwise it must lie within ±``label_limit``."""
    if not categorical and not numeric:
        raise DataError(f"{Path(source).name}: name at least one categorical or numeric column")
    yield from read_delimited(
        source,
        sep=delimiter,
        header=True,
        numeric=[label, *numeric],
        allow_missing=list(numeric),
        binary=[label] if binary_label else [],
        keep=list(dict.fromkeys([label, *categorical, *numeric])),
        chunk_rows=chunk_rows,
        quotechar='"' if len(delimiter) == 1 else None,
        limits={label: label_limit},
    )


def concat_chunks(chunks: Iterator[Chunk]) -> dict[str, np.ndarray]:
    """All chunks as one dict of columns (for files that fit in memory)."""
    parts: dict[str, list[np.ndarray]] = {}
    for chunk in chunks:
        for k, v in chunk.columns.items():
            parts.setdefault(k, []).append(v)
    return {k: v[0] if len(v) == 1 else np.concatenate(v) for k, v in parts.items()}
