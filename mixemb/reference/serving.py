"""References of the serving ops: the ragged gather / bag / dot over a ``RaggedTable`` and
the block gather over a ``BlockTable``, with the bytes each must move."""

from __future__ import annotations

import torch

from mixemb.quant import INT8_ROW_BYTES, dequantize_rows_int8
from mixemb.ragged import RaggedTable, expand_bits, popcount64

# ---- serving (ragged tables) -----------------------------------------------------------
# M lookups of rows keeping d_i values each (D = Σ d_i over the lookups), value size v,
# W = ceil(K/64) mask words, output written dense:
#     ragged gather = I + M·8·W (masks) + M·8 (group offset) + D·v (kept values) + M·K·v (out)
# The masks of the ≤ G-1 rows before a row in its group share its cache lines and are not
# counted. A padded gather of the unpruned table moves 2·M·K·v + I (padded_gather_bytes).
# With unique_rows = U (DRAM-only: caches serve a row's repeats), masks, group offsets and
# int8 scale and bias count once per distinct row, and D is the U distinct rows' kept values.
# A bag writes B·K·v instead of M·K·v; a dot reads both rows' kept values and writes M·4.
# An int8 table (dtype "int8") reads v = 1 B per kept value plus its row's fp16 scale and
# bias (4 B per lookup) and writes float32 rows and bags (4 B per output value).


def _ragged_sizes(dtype) -> tuple[int, int, int]:
    """(bytes per kept value, bytes per looked-up row beside them, bytes per output value)
    of a table of ``dtype``: a torch float dtype or "int8"."""
    if dtype == "int8":
        return 1, INT8_ROW_BYTES, 4
    v = torch.empty((), dtype=dtype).element_size()
    return v, 0, v


def _distinct(unique_rows: int | None, lookups: int) -> int:
    u = lookups if unique_rows is None else unique_rows
    if not 0 <= u <= lookups:
        raise ValueError(f"need 0 <= unique_rows <= {lookups} lookups, got {unique_rows}")
    return u


def ragged_gather_bytes(
    num_lookups: int,
    dim: int,
    kept_values: int,
    dtype=torch.float32,
    ids_dtype=torch.int64,
    unique_rows: int | None = None,
) -> int:
    """Ideal bytes of ``ragged_gather`` (see the formula above); kept_values = D; dtype a
    float dtype or "int8". unique_rows: U distinct rows among the lookups, whose masks,
    group offsets (and int8 scale and bias) are then read once each, the DRAM-only figure
    (pass the U rows' kept values as D); default None = M, every lookup reads its row's."""
    v, row, out = _ragged_sizes(dtype)
    i = torch.empty((), dtype=ids_dtype).element_size()
    words = -(-dim // 64)
    u = _distinct(unique_rows, num_lookups)
    return num_lookups * (i + dim * out) + u * (8 * words + 8 + row) + kept_values * v


def ragged_bag_bytes(
    num_lookups: int,
    num_bags: int,
    dim: int,
    kept_values: int,
    dtype=torch.float32,
    ids_dtype=torch.int64,
    unique_rows: int | None = None,
) -> int:
    """Ideal bytes of ``ragged_bag``: the gather's reads, B·K output values; unique_rows as
    in ``ragged_gather_bytes``."""
    v, row, out = _ragged_sizes(dtype)
    i = torch.empty((), dtype=ids_dtype).element_size()
    words = -(-dim // 64)
    u = _distinct(unique_rows, num_lookups)
    reads = num_lookups * i + u * (8 * words + 8 + row) + kept_values * v
    return reads + num_bags * dim * out + num_bags * 8


def ragged_dot_bytes(
    num_pairs: int,
    dim: int,
    kept_values: int,
    dtype=torch.float32,
    ids_dtype=torch.int64,
    unique_rows: int | None = None,
) -> int:
    """Ideal bytes of ``ragged_dot``: both rows' metadata and kept values, 4 B per score;
    unique_rows: U distinct rows among the 2·M looked-up ones (default None = 2·M), as in
    ``ragged_gather_bytes``."""
    v, row, _ = _ragged_sizes(dtype)
    i = torch.empty((), dtype=ids_dtype).element_size()
    words = -(-dim // 64)
    u = _distinct(unique_rows, 2 * num_pairs)
    return num_pairs * 2 * i + u * (8 * words + 8 + row) + kept_values * v + num_pairs * 4


# The references of the ragged serving ops (mixemb.ops.ragged), over a RaggedTable. They
# locate rows as the kernels do (group offset plus in-group popcounts), so they check the
# format as well as the kernels, and they reject an inconsistent table where the kernels
# do: the O(1) checks of every call (shapes, dtypes, group_offsets from 0 to nnz), then
# each looked-up row inside the values with no mask bit at or past K. An int8 table's
# looked-up codes are dequantized with mixemb.quant, as the kernels do on the fly.
def padded_bag_bytes(
    num_lookups: int,
    num_bags: int,
    dim: int,
    dtype: torch.dtype = torch.float32,
    ids_dtype: torch.dtype = torch.int64,
    unique_rows: int | None = None,
) -> int:
    """Ideal bytes of a padded sum bag: U rows, M ids and B offsets (8 B) in, B·K out."""
    u = _distinct(unique_rows, num_lookups)
    v = dtype.itemsize
    return u * dim * v + num_lookups * ids_dtype.itemsize + num_bags * (dim * v + 8)


def padded_dot_bytes(
    num_pairs: int,
    dim: int,
    dtype: torch.dtype = torch.float32,
    ids_dtype: torch.dtype = torch.int64,
    unique_rows: int | None = None,
) -> int:
    """Ideal bytes of a padded dot of M pairs: U rows (default 2M) and 2M ids in, M fp32
    scores out."""
    u = _distinct(unique_rows, 2 * num_pairs)
    return u * dim * dtype.itemsize + 2 * num_pairs * ids_dtype.itemsize + num_pairs * 4


def _check_serving_table(table: RaggedTable) -> None:
    """The checks every serving op makes before any lookup (csrc/ragged_cpu.cpp
    check_table, csrc/ragged_int8.h check_scale_bias); raises ValueError."""
    masks, values, offsets = table.masks, table.values, table.group_offsets
    n, k, g = masks.shape[0] if masks.dim() else 0, table.embedding_dim, table.group_size
    words = (k - 1) // 64 + 1 if k >= 1 else 0
    groups = (n - 1) // g + 1 if n and g >= 1 else 0
    if masks.dim() != 2 or masks.dtype != torch.int64 or k < 1 or masks.shape[1] != words:
        raise ValueError(f"masks must be (N, {words}) int64, got {tuple(masks.shape)}")
    if g < 1 or offsets.dim() != 1 or offsets.dtype != torch.int64 or len(offsets) != groups + 1:
        raise ValueError(f"group_offsets must be ({groups + 1},) int64, got {tuple(offsets.shape)}")
    sb = table.scale_bias
    if values.dim() != 1 or not (values.is_floating_point() or values.dtype == torch.uint8):
        raise ValueError(
            f"values must be 1-D float (uint8: int8), got {tuple(values.shape)} {values.dtype}"
        )
    if (values.dtype == torch.uint8) != (sb is not None):
        raise ValueError("uint8 values (an int8 table) need a scale_bias; float values none")
    if sb is not None and (sb.shape != (n, 2) or sb.dtype != torch.float16):
        raise ValueError(f"scale_bias must be ({n}, 2) float16, got {tuple(sb.shape)} {sb.dtype}")
    if int(offsets[0]) != 0 or int(offsets[-1]) != values.numel():
        raise ValueError(
            f"inconsistent ragged table: group_offsets run from {int(offsets[0])} to "
            f"{int(offsets[-1])}, values hold {values.numel()}"
        )


def ragged_gather_reference(table: RaggedTable, ids: torch.Tensor) -> torch.Tensor:
    """Torch-ops reference gather: ids (...) int32/int64 → (..., K) with zeros at pruned dims."""
    _check_serving_table(table)
    flat = ids.reshape(-1).long()
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= table.num_embeddings):
        bad = flat[(flat < 0) | (flat >= table.num_embeddings)][0]
        raise IndexError(f"id {int(bad)} out of range [0, {table.num_embeddings})")
    # A row's first value: its group's base plus the popcounts of the rows before it in
    # the group (at most group_size - 1 of them), as a serving kernel computes it.
    g = table.group_size
    group_start = flat - flat % g
    span = min(g - 1, max(table.num_embeddings - 1, 0))  # rows that can precede one
    prior = group_start.unsqueeze(1) + torch.arange(span, device=flat.device)
    before = prior < flat.unsqueeze(1)
    prior_masks = table.masks[prior.clamp(max=max(table.num_embeddings - 1, 0))]
    counts = (popcount64(prior_masks).sum(-1) * before).sum(1)
    starts = table.group_offsets[flat // g] + counts
    present = expand_bits(table.masks[flat], table.embedding_dim)
    k = table.embedding_dim
    high = (
        (table.masks[flat, -1] >> (k % 64)) != 0 if k % 64 else torch.zeros_like(flat, dtype=bool)
    )
    outside = (starts < 0) | (starts > table.nnz - present.sum(1)) | high
    if bool(outside.any()):
        row = int(flat[outside.nonzero()[0]])
        raise ValueError(f"inconsistent ragged table: row {row} lies outside the values")
    slots = starts.unsqueeze(1) + present.long().cumsum(1) - 1
    gathered = table.values[slots.clamp(min=0, max=max(table.nnz - 1, 0))] if table.nnz else None
    if gathered is not None and table.scale_bias is not None:
        gathered = dequantize_rows_int8(gathered, table.scale_bias[flat])
    out = torch.zeros(present.shape, dtype=table.rows_dtype, device=table.values.device)
    if gathered is not None:
        out = torch.where(present, gathered, out)
    return out.reshape(*ids.shape, table.embedding_dim)


def ragged_bag_reference(
    table: RaggedTable,
    ids: torch.Tensor,
    offsets: torch.Tensor,
    *,
    mode: str = "sum",
    per_sample_weights: torch.Tensor | None = None,
    include_last_offset: bool = False,
) -> torch.Tensor:
    """Pooled bags, ``nn.EmbeddingBag`` semantics: ids (M,) flat, offsets (B,) starts (or
    (B+1,) with ``include_last_offset``); mode "sum" or "mean"; per_sample_weights (M,)
    only with "sum". Returns (B, K); an empty bag gives zeros."""
    if mode not in ("sum", "mean"):
        raise ValueError(f"mode must be sum or mean, got {mode!r}")
    if per_sample_weights is not None and mode != "sum":
        raise ValueError("per_sample_weights only work with mode='sum'")
    rows = ragged_gather_reference(table, ids.reshape(-1))
    if per_sample_weights is not None:
        rows = rows * per_sample_weights.reshape(-1, 1).to(rows.dtype)
    offsets = offsets.long()
    if include_last_offset:
        starts, ends = offsets[:-1], offsets[1:]
    else:
        starts, ends = offsets, torch.cat([offsets[1:], offsets.new_tensor([ids.numel()])])
    if len(starts) and int(starts[0]) != 0:
        raise ValueError(f"offsets must start at 0, got {int(starts[0])}")
    lengths = ends - starts
    if bool((lengths < 0).any()):
        raise ValueError("offsets must be non-decreasing")
    bag = torch.repeat_interleave(torch.arange(len(starts), device=rows.device), lengths)
    out = torch.zeros(len(starts), table.embedding_dim, dtype=rows.dtype, device=rows.device)
    out.index_add_(0, bag, rows[: len(bag)])
    if mode == "mean":
        out = out / lengths.clamp(min=1).unsqueeze(1).to(out.dtype)
    return out


def ragged_dot_reference(
    table_a: RaggedTable, ids_a: torch.Tensor, table_b: RaggedTable, ids_b: torch.Tensor
) -> torch.Tensor:
    """MF scores (B,): Σ_k a[ids_a, k]·b[ids_b, k] over the dims both rows keep."""
    if table_a.embedding_dim != table_b.embedding_dim:
        raise ValueError(
            f"embedding dims differ: {table_a.embedding_dim} and {table_b.embedding_dim}"
        )
    a = ragged_gather_reference(table_a, ids_a)
    b = ragged_gather_reference(table_b, ids_b)
    acc = torch.float64 if a.dtype == torch.float64 else torch.float32
    return (a.to(acc) * b.to(acc)).sum(-1)


# ---- serving (block tables) ------------------------------------------------------------
# M lookups, L blocks, D = Σ d_l over the lookups' blocks, v, out as for ragged tables:
#     block gather = I + D·v + M·4 (int8 scale and bias) + M·K·out + (L+1)·8 + L·(24 + 4K)
# the last two terms: the boundaries and the serving index (layout, rank), read once.
def block_gather_bytes(num_lookups, num_blocks, dim, kept_values, dtype=torch.float32) -> int:
    """Ideal bytes of ``block_gather`` with int64 ids; dtype a float dtype or "int8"."""
    v, row, out = _ragged_sizes(dtype)
    index = (num_blocks + 1) * 8 + num_blocks * (24 + 4 * dim)
    return num_lookups * (8 + row + dim * out) + kept_values * v + index


def block_gather_reference(table, ids: torch.Tensor) -> torch.Tensor:
    """ids (...) int32/int64 in [0, N) of a BlockTable → (..., K) in its rows_dtype, zeros
    at the columns a row's block drops: block by block, from each block's dense table."""
    flat, n = ids.reshape(-1).long(), table.num_embeddings
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= n):
        raise ValueError(f"ids must be in [0, {n}), got {int(flat.min())}…{int(flat.max())}")
    out = flat.new_zeros(flat.numel(), table.embedding_dim, dtype=table.rows_dtype)
    bounds, mask = table.boundaries.tolist(), table.block_mask()
    for block, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
        hit = ((flat >= lo) & (flat < hi)).nonzero().flatten()
        cols = mask[block].nonzero().flatten()
        out[hit[:, None], cols] = table.block_values(block)[flat[hit] - lo]
    return out.reshape(*ids.shape, table.embedding_dim)
