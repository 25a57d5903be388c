"""``block_gather``: dense rows of a :class:`mixemb.block_table.BlockTable` (serving).

out[..., k] = the value of column k in the dense table of id's frequency block, 0 where
the block drops column k (an int8 table's values dequantized, bias + q·scale, float32).

Where it runs is decided once, by ``_use_triton``: the Triton kernel of
``mixemb.kernels.block_table`` (CUDA, or CPU under Triton's interpreter) or a vectorized
PyTorch path (lookups sorted by block, then one row gather and one column scatter per
block; no loop over rows). Two entry points share them:

* the registered op ``torch.ops.mixemb.block_gather(values, scale_bias, boundaries,
  layout, rank, ids, out_dtype, use_triton) -> (*ids.shape, K)`` with a fake kernel, what
  torch.compile and torch.export trace (and ``torch.library.opcheck`` checks);
* eager calls of :func:`block_gather` run the implementation directly: the custom-op
  dispatcher costs several times a small gather's host time (as for ``soft_select``).

The gather is not differentiable (a served table is not trained); a per-lookup multiplier
is applied outside it (:class:`mixemb.nn.block_table.BlockTableEmbedding`).
"""

from __future__ import annotations

import torch

from mixemb.block_table import BlockTable
from mixemb.ops.soft_select import check_ids_in_range

Tensor = torch.Tensor
BACKENDS = ("auto", "torch", "triton")
_kernels = None  # mixemb.kernels.block_table, imported on first use (triton is heavy)


def _use_triton(values: Tensor, backend: str) -> bool:
    """True for the Triton kernel: backend "triton", or "auto" on CUDA. ValueError for
    "triton" where it cannot run (a CPU tensor without Triton's interpreter)."""
    global _kernels
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch" or (backend == "auto" and not values.is_cuda):
        return False
    if _kernels is None:
        from mixemb.kernels import block_table as kernels

        _kernels = kernels
    if not (values.is_cuda or _kernels.INTERPRET):
        raise ValueError(
            "backend='triton' runs on CUDA tensors, or on CPU ones under Triton's "
            "interpreter (TRITON_INTERPRET=1 before mixemb.kernels is imported)"
        )
    return True


def _gather_torch(values, scale_bias, boundaries, layout, rank, flat, out_dtype) -> Tensor:
    """(M, K) in out_dtype: the PyTorch gather of flat (M,) ids; ids outside [0, N) give
    zero rows, as in the kernel. Lookups are sorted by block once; then each block's rows
    come from its dense (rows_l, d_l) view with one index_select and land in their
    lookups' kept columns with one index_put_ (work per block, not per row). It reads
    the block sizes on the host: a sync on the GPU, where the Triton kernel runs instead."""
    flat = flat.long()
    num_blocks, dim = rank.shape
    valid = (flat >= 0) & (flat < boundaries[-1])
    block = torch.searchsorted(boundaries[1:-1], flat, right=True)  # inner bounds ≤ id
    block = torch.where(valid, block, num_blocks)  # bad ids: a block of zero rows
    order = torch.argsort(block)
    ids = flat[order]
    counts = torch.bincount(block, minlength=num_blocks + 1).tolist()
    out = torch.zeros(flat.numel(), dim, dtype=out_dtype, device=flat.device)
    bounds, info = boundaries.tolist(), layout.tolist()
    start = 0
    for b, (value_start, row_start, d) in enumerate(info):
        count, lo = counts[b], bounds[b]
        if count and d:
            local = ids[start : start + count] - lo
            view = values[value_start : value_start + (bounds[b + 1] - lo) * d].view(-1, d)
            rows = view.index_select(0, local)
            if scale_bias is not None:  # bias + q·scale, the expression of mixemb.quant
                sb = scale_bias.index_select(0, local + row_start).float()
                rows = sb[:, 1:] + rows.float() * sb[:, :1]
            columns = (rank[b] >= 0).nonzero().flatten()
            at = order[start : start + count, None]
            out.index_put_((at, columns), rows.to(out_dtype))
        start += count
    return out


def _gather(values, scale_bias, boundaries, layout, rank, ids, out_dtype, use_triton) -> Tensor:
    flat = ids.reshape(-1)
    if use_triton:
        out = _kernels.block_gather_fwd(
            values, scale_bias, boundaries, layout, rank, flat.contiguous(), out_dtype
        )
    else:
        out = _gather_torch(values, scale_bias, boundaries, layout, rank, flat, out_dtype)
    return out.reshape(*ids.shape, rank.shape[1])


@torch.library.custom_op("mixemb::block_gather", mutates_args=())
def block_gather_op(
    values: Tensor,
    scale_bias: Tensor | None,
    boundaries: Tensor,
    layout: Tensor,
    rank: Tensor,
    ids: Tensor,
    out_dtype: torch.dtype,
    use_triton: bool,
) -> Tensor:
    """(*ids.shape, K) in out_dtype; see :func:`block_gather`."""
    return _gather(values, scale_bias, boundaries, layout, rank, ids, out_dtype, use_triton)


@block_gather_op.register_fake
def _(values, scale_bias, boundaries, layout, rank, ids, out_dtype, use_triton):
    return values.new_empty((*ids.shape, rank.shape[1]), dtype=out_dtype)


def block_gather(
    table: BlockTable,
    ids: Tensor,
    *,
    out_dtype: torch.dtype | None = None,
    check_bounds: bool | None = None,
    backend: str = "auto",
) -> Tensor:
    """Dense rows of a block table → (..., K), zeros at the columns a row's block drops.

    table: BlockTable of N rows, K columns (validated when built or loaded).
    ids: (...) int32/int64 in [0, N).
    out_dtype: default None (``table.rows_dtype``: the values' dtype, float32 for int8);
        a float dtype to write the rows in (float32 serves an fp16 table to a float32
        model without a second pass).
    check_bounds: default None = on for CPU tensors, off on the GPU (a host sync there);
        True raises ValueError naming the first id outside [0, N). Unchecked, such an id
        gives a zero row. Off while compiling.
    backend: default "auto" (the Triton kernel on CUDA, the vectorized PyTorch path on
        CPU); "torch"; or "triton" (CUDA, or CPU under Triton's interpreter).
    """
    if ids.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"ids must be int32 or int64, got {ids.dtype}")
    out_dtype = table.rows_dtype if out_dtype is None else out_dtype
    if not out_dtype.is_floating_point:
        raise ValueError(f"out_dtype must be a float dtype, got {out_dtype}")
    if ids.device != table.values.device:
        raise ValueError(f"ids are on {ids.device}, the table on {table.values.device}")
    use_triton = _use_triton(table.values, backend)
    layout, rank = table.serving_index()
    args = (table.values, table.scale_bias, table.boundaries, layout, rank, ids, out_dtype)
    if torch.compiler.is_compiling():
        return block_gather_op(*args, use_triton)
    if check_bounds if check_bounds is not None else not ids.is_cuda:
        check_ids_in_range(ids, table.num_embeddings)
    return _gather(*args, use_triton)
