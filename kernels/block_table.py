"""Triton gather kernel of block tables (``mixemb.block_table``) and its launcher.

Notation: M lookups (flattened ids), K columns, L frequency blocks; a table's values (V,)
float or uint8 codes, scale_bias (R, 2) float16 (int8 only), boundaries (L+1,) int64 and
its serving index: layout (L, 3) int64 (value start, int8 row start, d_l per block), rank
(L, K) int32 (a column's slot in its block's rows, -1 where dropped).

``_block_gather_kernel``: one program per tile of lookups × columns. block(id) is counted
in-kernel against the inner boundaries, so no per-row array is stored or read; a lookup's
value for column k sits at value_start + (id - b_l)·d_l + rank[l, k] — its row's values
are contiguous, so a tile's loads are too. An int8 value reads bias + q·scale in float32
from its row's fp16 scale and bias. Dropped columns and out-of-range ids write zeros (the
op checks ids on request), and so does a value or int8 row outside values / scale_bias
(an index the op's check did not see edited); no host synchronisation.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mixemb.kernels.soft_select import INTERPRET, _on_device, _tile

__all__ = ["INTERPRET", "block_gather_fwd"]


@triton.jit
def _block_gather_kernel(
    values_ptr,
    scale_bias_ptr,
    bounds_ptr,
    layout_ptr,
    rank_ptr,
    ids_ptr,
    out_ptr,
    num_lookups,
    dim,
    num_blocks,
    num_values,
    num_sb_rows,
    INT8: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    L_PAD: tl.constexpr,
):
    pid_m = tl.program_id(0).to(tl.int64)
    pid_k = tl.program_id(1).to(tl.int64)
    lookups = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    live = lookups < num_lookups
    cmask = cols < dim
    ids = tl.load(ids_ptr + lookups, mask=live, other=0).to(tl.int64)
    num_rows = tl.load(bounds_ptr + num_blocks)  # read here: N on the host is a GPU sync
    valid = live & (ids >= 0) & (ids < num_rows)
    ids = tl.where(valid, ids, 0)
    inner = tl.arange(0, L_PAD)  # block(id): how many inner boundaries b_1..b_{L-1} ≤ id
    live_inner = inner < num_blocks - 1
    bounds = tl.load(bounds_ptr + 1 + inner, mask=live_inner, other=0)
    hit = (ids[:, None] >= bounds[None, :]) & live_inner[None, :]
    blocks = tl.sum(hit.to(tl.int32), axis=1).to(tl.int64)
    local = ids - tl.load(bounds_ptr + blocks, mask=valid, other=0)
    value_start = tl.load(layout_ptr + blocks * 3, mask=valid, other=0)
    d = tl.load(layout_ptr + blocks * 3 + 2, mask=valid, other=0)
    tile = valid[:, None] & cmask[None, :]
    rank = tl.load(rank_ptr + blocks[:, None] * dim + cols[None, :], mask=tile, other=-1)
    at = (value_start + local * d)[:, None] + rank.to(tl.int64)
    # the op checks the index first; the bounds keep an edit it cannot see (through
    # .data or an alias) from reading outside the values: wrong rows, never a fault
    kept = tile & (rank >= 0) & (at >= 0) & (at < num_values)
    v = tl.load(values_ptr + at, mask=kept, other=0)
    if INT8:
        row = tl.load(layout_ptr + blocks * 3 + 1, mask=valid, other=0) + local
        has_row = valid & (d > 0) & (row >= 0) & (row < num_sb_rows)
        scale = tl.load(scale_bias_ptr + row * 2, mask=has_row, other=0.0)
        bias = tl.load(scale_bias_ptr + row * 2 + 1, mask=has_row, other=0.0)
        v = bias.to(tl.float32)[:, None] + v.to(tl.float32) * scale.to(tl.float32)[:, None]
        v = tl.where(kept, v, 0.0)
    tl.store(
        out_ptr + lookups[:, None] * dim + cols[None, :],
        v.to(out_ptr.dtype.element_ty),
        mask=live[:, None] & cmask[None, :],
    )


def block_gather_fwd(values, scale_bias, boundaries, layout, rank, ids, out_dtype):
    """Rows of a block table → out (M, K) in ``out_dtype``, zeros at dropped columns and
    at ids outside [0, N).

    values: (V,) float32/float16/bfloat16, or uint8 codes with scale_bias (R, 2) float16
    (None for a float table). boundaries: (L+1,) int64. layout: (L, 3) int64. rank: (L, K)
    int32. ids: (M,) int32/int64. Every tensor contiguous, on one device. out_dtype: a
    float dtype (float32 for an int8 table holds its dequantized values exactly).
    """
    tensors = {"values": values, "boundaries": boundaries, "layout": layout, "rank": rank}
    tensors["ids"] = ids
    if scale_bias is not None:
        tensors["scale_bias"] = scale_bias
    for name, t in tensors.items():
        if not t.is_contiguous() or t.device != values.device:
            raise ValueError(f"{name} must be contiguous on {values.device}")
    num_blocks, dim = rank.shape
    if layout.shape != (num_blocks, 3) or boundaries.shape != (num_blocks + 1,):
        raise ValueError(
            f"layout and boundaries must be ({num_blocks}, 3) and ({num_blocks + 1},), got "
            f"{tuple(layout.shape)} and {tuple(boundaries.shape)}"
        )
    if ids.dim() != 1 or ids.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"ids must be (M,) int32/int64, got {tuple(ids.shape)} {ids.dtype}")
    if (values.dtype == torch.uint8) != (scale_bias is not None):
        raise ValueError("uint8 values (an int8 table) need a scale_bias; float values none")
    out = torch.empty((ids.numel(), dim), dtype=out_dtype, device=values.device)
    if ids.numel() == 0:
        return out
    block_m, block_k = _tile(dim)
    grid = (triton.cdiv(ids.numel(), block_m), triton.cdiv(dim, block_k))
    with _on_device(values):
        _block_gather_kernel[grid](
            values, scale_bias if scale_bias is not None else values, boundaries, layout, rank,
            ids, out, ids.numel(), dim, num_blocks, values.numel(),
            scale_bias.shape[0] if scale_bias is not None else 0,
            INT8=scale_bias is not None, BLOCK_M=block_m, BLOCK_K=block_k,
            L_PAD=triton.next_power_of_2(max(num_blocks - 1, 1)),
        )  # fmt: skip
    return out
