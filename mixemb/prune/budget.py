"""A budget → the number of table entries to keep, and the bytes a table stores, for each
way a table is stored and each value dtype (the one place this is counted).

A budget is a fraction of the uniform-K table: of its N·K parameters
(``unit="params"``), or of its dense fp32 bytes 4·N·K (``unit="bytes"``). A byte budget
pays the storage format's metadata first, so equal budgets are equal stored bytes:

* ``"ragged"`` (:class:`mixemb.ragged.RaggedTable`): one uint64 mask word per 64
  dimensions per row plus one int64 offset per group of 16 rows (and one more);
* ``"blocks"``: one dense (rows_l, d_l) table per frequency block plus the L+1 int64
  block boundaries;
* ``"blockmask"``: the same, each block holding its own set of the K dimensions: plus
  the L×K mask bits (ceil(K/8) bytes per block);
* ``"dense"``: one (N, d) table, no metadata.

Values cost :func:`mixemb.quant.value_bytes` of their dtype (``"fp32"``, ``"fp16"``,
``"bf16"``, ``"int8"``); an int8 row of a dense or block table also pays its fp16 scale
and bias (4 B), counted as metadata. Ragged tables store fp32 / fp16 / bf16 values
(:data:`STORAGE_DTYPES`). So a byte budget buys more dimensions at a lower precision.
"""

from __future__ import annotations

import math

from mixemb.quant import VALUE_DTYPES, row_bytes, value_bytes

STORAGES = ("ragged", "blocks", "blockmask", "dense")
# the value dtypes each storage format holds
STORAGE_DTYPES = {
    "ragged": VALUE_DTYPES,
    "blocks": VALUE_DTYPES,
    "blockmask": VALUE_DTYPES,
    "dense": VALUE_DTYPES,
}
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


def block_mask_bytes(num_blocks: int, dim: int) -> int:
    """The L×K bits saying which of the K dimensions each block's table holds."""
    return num_blocks * math.ceil(dim / 8)


def check_storage_dtype(storage: str, value_dtype: str) -> None:
    """ValueError unless ``storage`` is a format that holds ``value_dtype`` values."""
    if storage not in STORAGE_DTYPES:
        raise ValueError(f"storage must be one of {', '.join(STORAGES)}, got {storage!r}")
    if value_dtype not in STORAGE_DTYPES[storage]:
        raise ValueError(
            f"{storage} tables store {', '.join(STORAGE_DTYPES[storage])} values, "
            f"got value_dtype={value_dtype!r}"
        )


def metadata_bytes(
    storage: str, num_rows: int, dim: int, num_blocks: int = 1, value_dtype: str = "fp32"
) -> int:
    """Bytes a table of N rows and max dim K pays in ``storage`` before any value (int8:
    every row's scale and bias included; every row keeps at least one dimension)."""
    check_storage_dtype(storage, value_dtype)
    per_row = row_bytes(value_dtype) * num_rows
    if storage == "ragged":
        return ragged_metadata_bytes(num_rows, dim) + per_row
    if storage == "blocks":
        return block_boundaries_bytes(num_blocks) + per_row
    if storage == "blockmask":
        return block_boundaries_bytes(num_blocks) + block_mask_bytes(num_blocks, dim) + per_row
    return per_row


def dense_bytes(num_rows: int, dim: int, value_dtype: str = "fp32") -> int:
    """Bytes of a dense (N, d) table in ``value_dtype`` (int8: plus a scale and bias a row)."""
    return num_rows * (dim * value_bytes(value_dtype) + row_bytes(value_dtype))


def ragged_bytes(num_rows: int, dim: int, nnz: int, value_dtype: str = "fp32") -> int:
    """Bytes of a RaggedTable of N rows, max dim K and ``nnz`` values in ``value_dtype``
    (int8: plus every row's scale and bias): its ``nbytes()``."""
    check_storage_dtype("ragged", value_dtype)
    return (
        ragged_metadata_bytes(num_rows, dim)
        + nnz * value_bytes(value_dtype)
        + row_bytes(value_dtype) * num_rows
    )


def block_tables_bytes(
    sizes: list[int],
    dims: list[int],
    value_dtype: str = "fp32",
    *,
    mask_dim: int | None = None,
) -> int:
    """Bytes of block dims stored as L dense tables (rows ``sizes``, dims ``dims``) in
    ``value_dtype`` plus their boundaries; int8 rows of a block with a dimension add
    their scale and bias. ``mask_dim``: K, when each block holds its own set of the K
    dimensions (``"blockmask"``), whose L×K mask bits are stored too."""
    values = sum(s * d for s, d in zip(sizes, dims))
    rows = sum(s for s, d in zip(sizes, dims) if d > 0)
    mask = 0 if mask_dim is None else block_mask_bytes(len(sizes), mask_dim)
    return (
        value_bytes(value_dtype) * values
        + row_bytes(value_dtype) * rows
        + block_boundaries_bytes(len(sizes))
        + mask
    )


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
    value_dtype: str = "fp32",
) -> int:
    """Entries a table of N = ``num_rows`` rows and max dim K = ``dim`` may keep at
    ``budget``: budget·N·K, or with ``unit="bytes"`` the ``value_dtype`` values that fit
    in budget·4·N·K bytes once ``storage``'s metadata is paid. Raises InfeasibleBudget
    when not even one value fits."""
    n, k = num_rows, dim
    check_storage_dtype(storage, value_dtype)
    if unit == "params":
        return round(budget * n * k)
    if unit != "bytes":
        raise ValueError(f"unit must be one of {', '.join(UNITS)}, got {unit!r}")
    meta = metadata_bytes(storage, n, k, num_blocks, value_dtype)
    nbytes = math.floor(budget * REFERENCE_VALUE_BYTES * n * k)
    size = value_bytes(value_dtype)
    if nbytes - meta < size:
        what = {"ragged": "ragged metadata", "blocks": "block boundaries"}.get(storage, storage)
        raise InfeasibleBudget(
            f"{budget * 4 * n * k:,.0f} bytes do not hold the {what} ({meta:,} B) of {n:,} rows"
        )
    return keep_count(n * k, nbytes=nbytes, bytes_per_entry=size, metadata=meta)


def uniform_dim(budget: float, dim: int, *, unit: str = "params", value_dtype: str = "fp32") -> int:
    """The one dimension d every row keeps in a dense (N, d) table at ``budget``, at least
    1: a fraction of K (params; bytes in fp32, a dense table having no metadata), or with
    ``unit="bytes"`` the most ``value_dtype`` values a row affords in budget·4·K bytes
    (its int8 scale and bias paid first), at most K. Raises InfeasibleBudget when a byte
    budget does not hold one value a row."""
    if unit == "params" or value_dtype == "fp32":
        return max(1, math.floor(budget * dim + 1e-9))
    check_storage_dtype("dense", value_dtype)
    room = budget * REFERENCE_VALUE_BYTES * dim - row_bytes(value_dtype)
    d = min(dim, math.floor(room / value_bytes(value_dtype) + 1e-9))
    if d < 1:
        raise InfeasibleBudget(
            f"budget {budget:g} ({budget * 4 * dim:.2f} B a row) does not hold one "
            f"{value_dtype} value a row"
        )
    return d
