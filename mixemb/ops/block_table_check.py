"""The per-call check of a block table's serving index, for the Python implementations of
``block_gather`` (the Triton kernel on CUDA or under Triton's interpreter, the PyTorch
path): the invariants the C++ CPU kernel checks in ``check_table``
(``csrc/block_table_cpu.cpp``), with its messages, so that an inconsistent table (a tensor
edited or replaced behind the BlockTable's back, or passed to the raw op) is a ValueError
on every device, never a read outside the values.

Per call, for free (tensor metadata on the host): every tensor's rank, dtype, device and
contiguity, the index's shapes, and the sizes of values and scale_bias against what the
blocks keep. The contents of boundaries, layout and rank (O(L·K)) are read once per state:
on a cache miss they are copied to the host (a sync on the GPU) and checked; the result is
kept against the three tensors' identities and version counters, which every in-place
edit through PyTorch bumps. Edits the version counter does not see (through ``.data``,
NumPy or DLPack aliases) and inference tensors (no version counter: checked on every call)
are the limits of that cache.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils.weak import WeakIdKeyDictionary

Tensor = torch.Tensor
_INT64_MAX = 2**63 - 1
_C10_NAMES = {torch.int32: "Int", torch.int64: "Long", torch.float16: "Half"}
_VALUE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.uint8)
# rank → (stamp of boundaries, layout and rank, (values kept, int8 rows, N))
_CHECKED: WeakIdKeyDictionary = WeakIdKeyDictionary()


def _fail(message: str) -> None:
    raise ValueError(f"block_gather: {message}")


def _check_tensor(t: Tensor, name: str, dims: int, dtype: torch.dtype, device) -> None:
    if t.dim() != dims or t.dtype != dtype:
        _fail(
            f"{name} must be {dims}-D {_C10_NAMES[dtype]} ({dtype}), got {list(t.shape)} {t.dtype}"
        )
    _check_placed(t, name, device)


def _check_placed(t: Tensor, name: str, device) -> None:
    if t.device != device or not t.is_contiguous():
        layout = "contiguous" if t.is_contiguous() else "strided"
        _fail(
            f"{name} must be a contiguous {device.type.upper()} tensor on {device}, got a "
            f"{layout} one on {t.device}"
        )


def check_serving_index(
    values: Tensor,
    scale_bias: Tensor | None,
    boundaries: Tensor,
    layout: Tensor,
    rank: Tensor,
) -> int:
    """Raise a one-line ValueError naming the first inconsistency of a table's tensors, in
    the C++ kernel's order and words; return N, the table's rows (from the host, no sync).

    values: (V,) float32/float16/bfloat16, or uint8 codes with scale_bias (R, 2) float16
    (None for a float table). boundaries: (L+1,) int64 from 0, strictly increasing.
    layout: (L, 3) int64, per block (first value, first int8 row, d_l). rank: (L, K) int32,
    each row numbering its kept columns 0, 1, … in column order, -1 elsewhere. All
    contiguous on values' device. V = Σ rows_l·d_l and R = Σ of the rows of the blocks
    with d_l > 0; the layout is the one the boundaries and rank give.
    """
    device = values.device
    _check_tensor(rank, "rank", 2, torch.int32, device)
    num_blocks, dim = rank.shape
    if num_blocks < 1 or dim < 1:
        _fail(f"rank must be (L, K) with L, K >= 1, got {list(rank.shape)}")
    _check_tensor(boundaries, "boundaries", 1, torch.int64, device)
    if boundaries.shape[0] != num_blocks + 1:
        _fail(
            f"boundaries must be ({num_blocks + 1},) for the {num_blocks} blocks of rank, got "
            f"{list(boundaries.shape)}"
        )
    _check_tensor(layout, "layout", 2, torch.int64, device)
    if layout.shape != (num_blocks, 3):
        _fail(f"layout must be ({num_blocks}, 3), got {list(layout.shape)}")
    if values.dim() != 1 or values.dtype not in _VALUE_DTYPES:
        _fail(
            f"values must be (V,) float32/float16/bfloat16 or uint8, got {list(values.shape)} "
            f"{values.dtype}"
        )
    _check_placed(values, "values", device)
    int8 = values.dtype == torch.uint8
    if int8 != (scale_bias is not None):
        _fail(
            "an int8 table (uint8 values) needs its (R, 2) float16 scale_bias"
            if int8
            else "scale_bias is for int8 tables (uint8 values)"
        )
    if scale_bias is not None:
        _check_tensor(scale_bias, "scale_bias", 2, torch.float16, device)
    kept, rows, num_rows = _checked_contents(boundaries, layout, rank)
    if values.numel() != kept:
        _fail(
            f"inconsistent block table: the blocks keep {kept} values but values holds "
            f"{values.numel()}"
        )
    if scale_bias is not None and scale_bias.shape != (rows, 2):
        _fail(
            f"inconsistent block table: scale_bias must be ({rows}, 2) (a row of every block "
            f"keeping a column), got {list(scale_bias.shape)}"
        )
    return num_rows


def _stamp(t: Tensor) -> tuple | None:
    """What changes when t's contents may have: its storage and version (None for an
    inference tensor, which has no version counter)."""
    if t.is_inference():
        return None
    return (t.data_ptr(), t._version)


def _checked_contents(boundaries: Tensor, layout: Tensor, rank: Tensor) -> tuple[int, int, int]:
    """(values kept, int8 rows, N) of checked contents, from the cache when the three
    tensors are the ones last checked with rank, unedited."""
    stamps = (_stamp(boundaries), _stamp(layout), _stamp(rank))
    hit = _CHECKED.get(rank)
    if hit is not None and None not in stamps:
        refs, seen, totals = hit
        if refs[0]() is boundaries and refs[1]() is layout and seen == stamps:
            return totals
    totals = _check_contents(boundaries.cpu(), layout.cpu(), rank.cpu())
    if None not in stamps:
        _CHECKED[rank] = ((weakref.ref(boundaries), weakref.ref(layout)), stamps, totals)
    return totals


def _check_contents(boundaries: Tensor, layout: Tensor, rank: Tensor) -> tuple[int, int, int]:
    """The C++ kernel's block-by-block pass over host copies: boundaries, each rank row,
    each layout row, the running sums' overflow, in that order."""
    kept_cols = rank >= 0
    before = kept_cols.long().cumsum(1) - kept_cols.long()  # kept columns left of each
    bad = (rank != -1) & (rank.long() != before)
    bad_rows = bad.any(1).tolist()
    dims = kept_cols.sum(1).tolist()
    b, lay = boundaries.tolist(), layout.tolist()
    if b[0] != 0:
        _fail(f"inconsistent block table: boundaries[0] = {b[0]}, not 0")
    value_start = row_start = 0
    for block, d in enumerate(dims):
        if b[block + 1] <= b[block]:
            _fail(
                f"inconsistent block table: boundaries[{block + 1}] = {b[block + 1]} is not "
                f"above boundaries[{block}] = {b[block]}"
            )
        if bad_rows[block]:
            k = int(bad[block].nonzero()[0])
            _fail(
                f"inconsistent block table: rank[{block}, {k}] = {int(rank[block, k])}, "
                f"expected -1 or {int(before[block, k])} (a block's kept columns numbered in "
                f"order)"
            )
        if lay[block] != [value_start, row_start, d]:
            _fail(
                f"inconsistent block table: layout[{block}] = {tuple(lay[block])} but the "
                f"boundaries and rank give {(value_start, row_start, d)}"
            )
        size = b[block + 1] - b[block]
        value_start += size * d
        row_start += size if d > 0 else 0
        if value_start > _INT64_MAX or row_start > _INT64_MAX:
            _fail(
                f"inconsistent block table: the values of blocks 0..{block} overflow int64 "
                f"(boundaries[{block + 1}] = {b[block + 1]})"
            )
    return value_start, row_start, b[-1]
