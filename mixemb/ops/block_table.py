"""``block_gather``: dense rows of a :class:`mixemb.block_table.BlockTable` (serving).

out[..., k] = the value of column k in the dense table of id's frequency block, 0 where
the block drops column k (an int8 table's values dequantized, bias + q·scale, float32).

Three implementations, chosen per call by ``backend``:

* ``"extension"``: the C++ kernel of ``mixemb._C`` (``csrc/block_table_cpu.cpp``; CPU
  tensors), which checks the table's serving index against its boundaries and sizes on
  every call (O(L·K)): an inconsistent table is a ValueError, never a read outside it;
* ``"triton"``: the Triton kernel of ``mixemb.kernels.block_table`` (CUDA, or CPU under
  Triton's interpreter);
* ``"torch"``: vectorized PyTorch (lookups sorted by block, then one row gather and one
  column scatter per block; no loop over rows).

The Triton and PyTorch paths check the same invariants with the same messages before they
read a value (:func:`mixemb.ops.block_table_check.check_serving_index`: the index's
contents are read once per state of its tensors, so a GPU call syncs only after an edit).

``"auto"`` (the default) takes the C++ kernel on CPU and the Triton kernel on CUDA. They
are one registered op, ``torch.ops.mixemb.block_gather(values, scale_bias, boundaries,
layout, rank, ids, out_dtype=None, check_bounds=True) -> (*ids.shape, K)``: its schema in
``csrc/ops.cpp``, its CPU kernel the C++ one, its CUDA kernel the Triton launcher and its
fake kernel registered here — what torch.compile and torch.export trace (and
``torch.library.opcheck`` checks), whatever ``backend`` says. Eager calls of
:func:`block_gather` run the chosen implementation directly (the Triton and PyTorch paths
skip the dispatcher, which costs several times a small gather's host time). Without
``mixemb._C`` the op is defined here with the same schema, its CPU kernel the PyTorch path,
and ``"auto"`` warns once that it runs that path.

The gather is not differentiable (a served table is not trained); a per-lookup multiplier
is applied outside it (:class:`mixemb.nn.block_table.BlockTableEmbedding`).
"""

from __future__ import annotations

import torch

from mixemb import _ext
from mixemb.block_table import BlockTable
from mixemb.ops.block_table_check import check_serving_index
from mixemb.ops.soft_select import check_ids_in_range

Tensor = torch.Tensor
BACKENDS = ("auto", "extension", "torch", "triton")
# The op's schema, as csrc/ops.cpp defines it (tests check that the two agree).
SCHEMA = (
    "block_gather(Tensor values, Tensor? scale_bias, Tensor boundaries, Tensor layout, "
    "Tensor rank, Tensor ids, ScalarType? out_dtype=None, bool check_bounds=True) -> Tensor"
)
_kernels = None  # mixemb.kernels.block_table, imported on first use (triton is heavy)


def _triton_kernels():
    global _kernels
    if _kernels is None:
        from mixemb.kernels import block_table as kernels

        _kernels = kernels
    return _kernels


def _choose(values: Tensor, backend: str) -> str:
    """The implementation of ``backend`` for a table on values' device: "extension",
    "torch" or "triton". ValueError where it cannot run: "extension" for CUDA tensors,
    "triton" for CPU ones without Triton's interpreter; RuntimeError for "extension"
    without mixemb._C."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if values.is_cuda:
            return "triton"
        if _ext.HAS_EXT:
            return "extension"
        _ext.warn_fallback("block_gather")
        return "torch"
    if backend == "extension":
        if values.is_cuda:
            raise ValueError("backend='extension' is the C++ kernel of CPU tensors")
        if not _ext.HAS_EXT:
            raise RuntimeError(f"block_gather: mixemb._C is not available ({_ext.LOAD_ERROR})")
    if backend == "triton" and not (values.is_cuda or _triton_kernels().INTERPRET):
        raise ValueError(
            "backend='triton' runs on CUDA tensors, or on CPU ones under Triton's "
            "interpreter (TRITON_INTERPRET=1 before mixemb.kernels is imported)"
        )
    return backend


def _rows_dtype(values: Tensor) -> torch.dtype:
    return torch.float32 if values.dtype == torch.uint8 else values.dtype


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


def _gather(
    values, scale_bias, boundaries, layout, rank, ids, out_dtype, check_bounds, triton
) -> Tensor:
    """(*ids.shape, K): the Triton kernel (``triton``) or the PyTorch path, after the
    table's check (:func:`check_serving_index`) and, with check_bounds, the ids' (a host
    sync on the GPU)."""
    num_rows = check_serving_index(values, scale_bias, boundaries, layout, rank)
    if check_bounds:
        check_ids_in_range(ids, num_rows)
    flat = ids.reshape(-1)
    if triton:
        out = _triton_kernels().block_gather_fwd(
            values, scale_bias, boundaries, layout, rank, flat.contiguous(), out_dtype
        )
    else:
        out = _gather_torch(values, scale_bias, boundaries, layout, rank, flat, out_dtype)
    return out.reshape(*ids.shape, rank.shape[1])


def _registered(triton: bool):
    """The op's kernel for a device whose implementation is Python: the Triton launcher
    (CUDA) or the PyTorch path (CPU without mixemb._C)."""

    def kernel(
        values, scale_bias, boundaries, layout, rank, ids, out_dtype=None, check_bounds=True
    ):
        out_dtype = _rows_dtype(values) if out_dtype is None else out_dtype
        args = (values, scale_bias, boundaries, layout, rank, ids, out_dtype, check_bounds)
        return _gather(*args, triton)

    return kernel


if not _ext.HAS_EXT:
    _name, _, _signature = SCHEMA.partition("(")
    torch.library.define(f"mixemb::{_name}", f"({_signature}")
    torch.library.impl("mixemb::block_gather", "CPU")(_registered(triton=False))
torch.library.impl("mixemb::block_gather", "CUDA")(_registered(triton=True))


@torch.library.register_fake("mixemb::block_gather")
def _(values, scale_bias, boundaries, layout, rank, ids, out_dtype=None, check_bounds=True):
    dtype = _rows_dtype(values) if out_dtype is None else out_dtype
    return values.new_empty((*ids.shape, rank.shape[1]), dtype=dtype)


def block_gather(
    table: BlockTable,
    ids: Tensor,
    *,
    out_dtype: torch.dtype | None = None,
    check_bounds: bool | None = None,
    backend: str = "auto",
) -> Tensor:
    """Dense rows of a block table → (..., K), zeros at the columns a row's block drops.

    table: BlockTable of N rows, K columns (validated when built or loaded; its serving
        index checked against its boundaries and sizes on every call, a ValueError where
        they disagree).
    ids: (...) int32/int64 in [0, N).
    out_dtype: default None (``table.rows_dtype``: the values' dtype, float32 for int8);
        a float dtype to write the rows in (float32 serves an fp16 table to a float32
        model without a second pass).
    check_bounds: default None = on for CPU tensors, off on the GPU (a host sync there);
        True raises ValueError naming the first id outside [0, N). Unchecked, such an id
        gives a zero row (and reads nothing).
    backend: default "auto" (the C++ kernel on CPU, the Triton kernel on CUDA);
        "extension" (C++, CPU tensors), "torch" or "triton" (CUDA, or CPU under Triton's
        interpreter). Under torch.compile the registered op runs: the C++ kernel on CPU
        (the PyTorch path without mixemb._C), the Triton kernel on CUDA.
    """
    if ids.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"ids must be int32 or int64, got {ids.dtype}")
    out_dtype = table.rows_dtype if out_dtype is None else out_dtype
    if not out_dtype.is_floating_point:
        raise ValueError(f"out_dtype must be a float dtype, got {out_dtype}")
    if ids.device != table.values.device:
        raise ValueError(f"ids are on {ids.device}, the table on {table.values.device}")
    kernel = _choose(table.values, backend)
    check = not ids.is_cuda if check_bounds is None else bool(check_bounds)
    layout, rank = table.serving_index()
    args = (table.values, table.scale_bias, table.boundaries, layout, rank, ids, out_dtype)
    if torch.compiler.is_compiling():
        return torch.ops.mixemb.block_gather(*args, check)
    if kernel == "extension":
        return torch.ops.mixemb.block_gather.default(*args, check)
    return _gather(*args, check, kernel == "triton")
