"""A budget → the number of table entries to keep, for each way a table is stored.

A budget is a fraction of the uniform-K table: of its N·K parameters
(``unit="params"``), or of its dense fp32 bytes 4·N·K (``unit="bytes"``). A byte budget
pays the storage format's metadata first, so equal budgets are equal stored bytes:

* ``"ragged"`` (:class:`mixemb.ragged.RaggedTable`): one uint64 mask word per 64
  dimensions per row plus one int64 offset per group of 16 rows (and one more);
* ``"blocks"``: one dense (rows_l, d_l) table per frequency block plus the L+1 int64
  block boundaries;
* ``"dense"``: one (N, d) table, no metadata.
"""

from __future__ import annotations

import math

STORAGES = ("ragged", "blocks", "dense")
UNITS = ("params", "bytes")
REFERENCE_VALUE_BYTES = 4  # the uniform-K reference table stores fp32 values
INDEX_BYTES = 8  # int64 mask words, offsets and block boundaries


class InfeasibleBudget(ValueError):
    """No table fits the budget (e.g. the budget does not even hold the metadata)."""


def ragged_metadata_bytes(num_rows: int, dim: int, group_size: int = 16) -> int:
    """Bytes of a RaggedTable's metadata (masks + group offsets) for N rows of max dim K."""
    return (
        num_rows * max(math.ceil(dim / 64), 1) * INDEX_BYTES
        + (math.ceil(num_rows / group_size) + 1) * INDEX_BYTES
    )


def block_boundaries_bytes(num_blocks: int) -> int:
    """Metadata of block dims stored as L dense tables: the L+1 int64 block boundaries."""
    return INDEX_BYTES * (num_blocks + 1)


def metadata_bytes(storage: str, num_rows: int, dim: int, num_blocks: int = 1) -> int:
    """Bytes a table of N rows and max dim K pays in ``storage`` before any value."""
    if storage == "ragged":
        return ragged_metadata_bytes(num_rows, dim)
    if storage == "blocks":
        return block_boundaries_bytes(num_blocks)
    if storage == "dense":
        return 0
    raise ValueError(f"storage must be one of {', '.join(STORAGES)}, got {storage!r}")


def block_tables_bytes(sizes: list[int], dims: list[int]) -> int:
    """Bytes of block dims stored as L dense fp32 tables (rows ``sizes``, dims ``dims``)
    plus their boundaries."""
    values = sum(s * d for s, d in zip(sizes, dims))
    return REFERENCE_VALUE_BYTES * values + block_boundaries_bytes(len(sizes))


def keep_count(
    numel: int,
    *,
    keep: int | None = None,
    ratio: float | None = None,
    nbytes: int | None = None,
    bytes_per_entry: float | None = None,
    metadata: int = 0,
) -> int:
    """Number of entries to keep from exactly one budget.

    keep: an entry count. ratio: a fraction of ``numel`` (the uniform table's size).
    nbytes: the bytes a table may store, ``metadata`` of them its format's (see
    :func:`metadata_bytes`), ``bytes_per_entry`` the cost of one kept value; more bytes
    than the whole table needs keep it whole. Raises InfeasibleBudget when ``nbytes``
    does not hold the metadata.
    """
    if sum(x is not None for x in (keep, ratio, nbytes)) != 1:
        raise ValueError("give exactly one budget: keep, ratio or nbytes")
    if keep is not None:
        k = int(keep)
    elif ratio is not None:
        if not 0 <= ratio <= 1:
            raise ValueError(f"ratio must be in [0, 1], got {ratio}")
        k = round(ratio * numel)
    else:
        if not bytes_per_entry or bytes_per_entry <= 0:
            raise ValueError("a byte budget needs bytes_per_entry > 0")
        room = nbytes - metadata
        if room < 0:
            raise InfeasibleBudget(f"{nbytes} bytes do not even hold the metadata ({metadata} B)")
        k = min(int(room // bytes_per_entry), numel)
    if not 0 <= k <= numel:
        raise ValueError(f"budget keeps {k} entries; the table has {numel}")
    return k


def budget_keep(
    budget: float,
    num_rows: int,
    dim: int,
    *,
    unit: str = "params",
    storage: str = "ragged",
    num_blocks: int = 1,
) -> int:
    """Entries a table of N = ``num_rows`` rows and max dim K = ``dim`` may keep at
    ``budget``: budget·N·K, or with ``unit="bytes"`` the fp32 values that fit in
    budget·4·N·K bytes once ``storage``'s metadata is paid. Raises InfeasibleBudget when
    not even one value fits."""
    n, k = num_rows, dim
    if unit == "params":
        return round(budget * n * k)
    if unit != "bytes":
        raise ValueError(f"unit must be one of {', '.join(UNITS)}, got {unit!r}")
    meta = metadata_bytes(storage, n, k, num_blocks)
    nbytes = math.floor(budget * REFERENCE_VALUE_BYTES * n * k)
    if nbytes - meta < REFERENCE_VALUE_BYTES:
        what = {"ragged": "ragged metadata", "blocks": "block boundaries"}.get(storage, storage)
        raise InfeasibleBudget(
            f"{budget * 4 * n * k:,.0f} bytes do not hold the {what} ({meta:,} B) of {n:,} rows"
        )
    return keep_count(n * k, nbytes=nbytes, bytes_per_entry=REFERENCE_VALUE_BYTES, metadata=meta)


def uniform_dim(budget: float, dim: int) -> int:
    """The one dimension d every row keeps in a dense (N, d) table at ``budget`` (a
    fraction of K, the same for params and bytes: a dense table has no metadata), at
    least 1."""
    return max(1, math.floor(budget * dim + 1e-9))
