"""Serving ops over a :class:`mixemb.ragged.RaggedTable` (pruned, padding-free tables).

The kernels are ``torch.ops.mixemb.ragged_{gather,bag,dot}`` from the compiled extension
(C++ on CPU, CUDA on GPU; schemas in ``csrc/ops.cpp``). This module registers their fake
(meta) kernels, so that ``torch.compile`` and ``torch.export`` trace them. The autograd of
``ragged_bag`` with respect to ``per_sample_weights`` is registered in C++
(``csrc/ragged_autograd.cpp``): a call that needs no gradient reaches the kernel without
entering Python's autograd. Without the extension every op runs
its pure-PyTorch reference (``mixemb.reference``) after a one-time warning.

An int8 table (``RaggedTable.from_dense(..., dtype="int8")``) passes its (N, 2) float16
``scale_bias`` to the kernels, which dequantize each value as they read it (bias + q·scale):
its rows, bags and scores are float32. Float tables pass None.

The CUDA kernel variants are keyword arguments of every op, so that they are selected per
call and tested and benchmarked side by side (bench/bench_serve.py). The CPU kernels check
their values and otherwise ignore them:

* ``one_warp`` (default False): rows of one mask word (K <= 64) take the one-warp kernel
  of wider rows (a warp per lookup; per bag for ``ragged_bag``) instead of 16 lanes each;
* ``lookups_at_once`` (default None = the kernel's own, 1; 4 for ``bag_kernel="lanes"``):
  lookups (pairs for ``ragged_dot``) that 16 lanes of a one-word kernel serve at once,
  1, 2, 4 or 8;
* ``bag_kernel`` (``ragged_bag`` only, default "halves"): over one-word rows, "halves"
  (each half-warp takes every other lookup of a bag) or "lanes" (a bag's 32 lanes first
  locate 32 of its lookups at once).
"""

from __future__ import annotations

import torch

from mixemb import _ext
from mixemb.ragged import RaggedTable
from mixemb.reference import (
    ragged_bag_reference,
    ragged_dot_reference,
    ragged_gather_reference,
)

BACKENDS = ("auto", "extension", "reference")
MODES = {"sum": 0, "mean": 1}
BAG_KERNELS = ("halves", "lanes")
LOOKUPS_AT_ONCE = (None, 1, 2, 4, 8)


def _use_extension(backend: str, op: str) -> bool:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "reference":
        return False
    if not _ext.HAS_EXT:
        if backend == "extension":
            raise RuntimeError(f"{op}: mixemb._C is not available ({_ext.LOAD_ERROR})")
        _ext.warn_fallback(op)
        return False
    return True


def check_kernel_variant(lookups_at_once: int | None, bag_kernel: str = "halves") -> None:
    """Raise ValueError unless lookups_at_once is None, 1, 2, 4 or 8 and bag_kernel is
    "halves" or "lanes" (the kernels check too; this also covers the reference backend and
    modules that store a variant)."""
    if lookups_at_once not in LOOKUPS_AT_ONCE:
        raise ValueError(f"lookups_at_once must be 1, 2, 4 or 8 (or None), got {lookups_at_once!r}")
    if bag_kernel not in BAG_KERNELS:
        raise ValueError(f"bag_kernel must be one of {BAG_KERNELS}, got {bag_kernel!r}")


def _check_ids(ids: torch.Tensor, name: str = "ids") -> None:
    if ids.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{name} must be int32 or int64, got {ids.dtype}")


def _bounds(check_bounds: bool | None, ids: torch.Tensor) -> bool:
    return ids.device.type == "cpu" if check_bounds is None else bool(check_bounds)


def _check_out(out: torch.Tensor, table: RaggedTable, ids: torch.Tensor) -> None:
    shape = (*ids.shape, table.embedding_dim)
    if tuple(out.shape) != shape:
        raise ValueError(f"out must have shape {shape} (ids' shape + [K]), got {tuple(out.shape)}")
    if out.dtype != table.rows_dtype:
        raise ValueError(f"out must be {table.rows_dtype} like the table's rows, got {out.dtype}")
    if out.device != table.values.device:
        raise ValueError(f"out is on {out.device}, the table on {table.values.device}")
    if not out.is_contiguous():
        raise ValueError("out must be contiguous")
    if out.requires_grad and torch.is_grad_enabled():
        raise ValueError("out must not require grad: the gather is not differentiable")


def ragged_gather(
    table: RaggedTable,
    ids: torch.Tensor,
    *,
    out: torch.Tensor | None = None,
    check_bounds: bool | None = None,
    one_warp: bool = False,
    lookups_at_once: int | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Dense rows of a ragged table → (..., K) in the table's value dtype (float32 for an
    int8 table), zeros at pruned dimensions (``out`` when given).

    table: RaggedTable with N rows of maximum dimension K.
    ids: (...) int32/int64 in [0, N).
    out: default None; a contiguous (..., K) buffer of the rows' dtype and the table's device
        to write the rows into and return. A serving loop that reuses one skips the
        allocation and, on the CPU, the first-touch page faults of a fresh output (most of
        a big gather's time; bench/README.md).
    check_bounds: default None = on for CPU tensors, off on the GPU (the check costs a host
        sync there; without it a bad id reads nothing and yields a zero row — never an
        illegal memory access); True raises an error naming the first out-of-range id.
        An inconsistent table (tensors edited behind the RaggedTable's back) is a
        ValueError on the CPU whatever check_bounds says (O(1) checks of group_offsets'
        ends per call, each looked-up row inside the values); on the GPU such a row reads
        nothing (zeros) and is an error only with check_bounds. ``RaggedTable`` and
        ``RaggedEmbedding`` validate a whole table when built or loaded.
    one_warp: default False; CUDA kernel variant (module docstring), ignored on CPU.
    lookups_at_once: default None; CUDA kernel variant (module docstring), 1, 2, 4 or 8,
        checked but ignored on CPU.
    backend: default "auto" (the extension when built, else the reference), "extension"
        or "reference".
    """
    _check_ids(ids)
    check_kernel_variant(lookups_at_once)
    if out is not None:
        _check_out(out, table, ids)
    if not _use_extension(backend, "ragged_gather"):
        rows = ragged_gather_reference(table, ids)
        return rows if out is None else out.copy_(rows)
    t = (table.masks, table.values, table.group_offsets, table.group_size, table.embedding_dim)
    variant = (bool(one_warp), lookups_at_once, table.scale_bias)
    if out is not None:
        torch.ops.mixemb.ragged_gather_out.default(
            *t, ids, out, _bounds(check_bounds, ids), *variant
        )
        return out
    return torch.ops.mixemb.ragged_gather.default(*t, ids, _bounds(check_bounds, ids), *variant)


def ragged_bag(
    table: RaggedTable,
    ids: torch.Tensor,
    offsets: torch.Tensor,
    *,
    mode: str = "sum",
    per_sample_weights: torch.Tensor | None = None,
    include_last_offset: bool = False,
    check_bounds: bool | None = None,
    bag_kernel: str = "halves",
    one_warp: bool = False,
    lookups_at_once: int | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Pooled bags with ``nn.EmbeddingBag`` semantics → (B, K) in the table's value dtype
    (float32 for an int8 table); an empty bag gives zeros.

    table: RaggedTable with N rows of maximum dimension K.
    ids: (M,) int32/int64 in [0, N).
    offsets: (B,) int32/int64 bag starts (or (B+1,) with include_last_offset), starting at
        0, non-decreasing.
    mode: default "sum"; or "mean".
    per_sample_weights: default None; (M,) float, mode "sum" only; differentiable.
    include_last_offset: default False; True when offsets has B+1 entries (the last is M).
    check_bounds: default None = on for CPU tensors, off on the GPU (as ``ragged_gather``;
        on the GPU the offsets check is a host sync too).
    bag_kernel: default "halves"; or "lanes"; CUDA kernel variant (module docstring),
        checked but ignored on CPU.
    one_warp: default False; CUDA kernel variant, ignored on CPU.
    lookups_at_once: default None; CUDA kernel variant, 1, 2, 4 or 8, checked but ignored
        on CPU.
    backend: default "auto"; or "extension", "reference" (as ``ragged_gather``).
    """
    _check_ids(ids)
    _check_ids(offsets, "offsets")
    check_kernel_variant(lookups_at_once, bag_kernel)
    if mode not in MODES:
        raise ValueError(f"mode must be sum or mean, got {mode!r}")
    if not _use_extension(backend, "ragged_bag"):
        return ragged_bag_reference(
            table,
            ids,
            offsets,
            mode=mode,
            per_sample_weights=per_sample_weights,
            include_last_offset=include_last_offset,
        )
    return torch.ops.mixemb.ragged_bag.default(
        table.masks,
        table.values,
        table.group_offsets,
        table.group_size,
        table.embedding_dim,
        ids,
        offsets,
        MODES[mode],
        per_sample_weights,
        include_last_offset,
        _bounds(check_bounds, ids),
        bag_kernel,
        bool(one_warp),
        lookups_at_once,
        table.scale_bias,
    )


def ragged_dot(
    table_a: RaggedTable,
    ids_a: torch.Tensor,
    table_b: RaggedTable,
    ids_b: torch.Tensor,
    *,
    check_bounds: bool | None = None,
    one_warp: bool = False,
    lookups_at_once: int | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """MF-style scores (...,) float32 (float64 for float64 tables): Σ over the dims both
    rows keep of a·b, never materialising a padded row.

    table_a, table_b: RaggedTables of the same maximum dimension K, value dtypes alike
        (both int8, or the same float dtype).
    ids_a: (...) int32/int64 rows of table_a; ids_b: the same shape, rows of table_b.
    check_bounds: default None = on for CPU tensors, off on the GPU (as ``ragged_gather``;
        a pair with a bad id scores 0 unchecked).
    one_warp: default False; CUDA kernel variant (module docstring), ignored on CPU.
    lookups_at_once: default None; CUDA kernel variant, 1, 2, 4 or 8, checked but ignored
        on CPU.
    backend: default "auto"; or "extension", "reference" (as ``ragged_gather``).
    """
    _check_ids(ids_a, "ids_a")
    _check_ids(ids_b, "ids_b")
    check_kernel_variant(lookups_at_once)
    if table_a.embedding_dim != table_b.embedding_dim:
        raise ValueError(
            f"embedding dims differ: {table_a.embedding_dim} and {table_b.embedding_dim}"
        )
    if not _use_extension(backend, "ragged_dot"):
        return ragged_dot_reference(table_a, ids_a, table_b, ids_b)
    return torch.ops.mixemb.ragged_dot.default(
        table_a.masks,
        table_a.values,
        table_a.group_offsets,
        table_a.group_size,
        table_b.masks,
        table_b.values,
        table_b.group_offsets,
        table_b.group_size,
        table_a.embedding_dim,
        ids_a,
        ids_b,
        _bounds(check_bounds, ids_a),
        bool(one_warp),
        lookups_at_once,
        table_a.scale_bias,
        table_b.scale_bias,
    )


# ---- fake kernels (only when the extension defined the ops) -------------------------------
if _ext.HAS_EXT:
    # The output depends on the shapes and the values' dtype only: the flags after them
    # (check_bounds, the kernel variant, scale_bias) are taken and ignored, whether passed
    # by position or by name. uint8 values (an int8 table) give float32 rows.
    def _rows_dtype(values: torch.Tensor) -> torch.dtype:
        return torch.float32 if values.dtype == torch.uint8 else values.dtype

    @torch.library.register_fake("mixemb::ragged_gather")
    def _gather_fake(masks, values, group_offsets, group_size, dim, ids, *flags, **named):
        return values.new_empty((*ids.shape, dim), dtype=_rows_dtype(values))

    @torch.library.register_fake("mixemb::ragged_gather_out")
    def _gather_out_fake(masks, values, group_offsets, group_size, dim, ids, out, *flags, **named):
        return None

    @torch.library.register_fake("mixemb::ragged_bag")
    def _bag_fake(
        masks,
        values,
        group_offsets,
        group_size,
        dim,
        ids,
        offsets,
        mode,
        per_sample_weights,
        include_last_offset,
        *flags,
        **named,
    ):
        bags = offsets.shape[0] - 1 if include_last_offset else offsets.shape[0]
        return values.new_empty((bags, dim), dtype=_rows_dtype(values))

    @torch.library.register_fake("mixemb::ragged_dot")
    def _dot_fake(
        masks_a,
        values_a,
        group_offsets_a,
        group_size_a,
        masks_b,
        values_b,
        group_offsets_b,
        group_size_b,
        dim,
        ids_a,
        ids_b,
        *flags,
        **named,
    ):
        dtype = torch.float64 if values_a.dtype == torch.float64 else torch.float32
        return values_a.new_empty(ids_a.shape, dtype=dtype)
