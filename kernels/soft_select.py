"""Triton kernels of the DNIS lookup × α op (forward and α step) and their launchers.

Notation: B lookups (flattened ids), table E (N, K), soft selection α (L, K), block
boundaries (L+1,) int64. E and the output gradient dout (B, K) are read through their row
strides (unit column stride, any row stride): a table that is a column slice of a wider
one, or a dout that is a slice of a concatenation's gradient, is read in place, not
copied. block(id) is computed in-kernel by comparing the id with the
L-1 inner boundaries (L ≤ 64): no per-row block array is stored or read. Every launcher
also takes ``block_map`` (N,) int64 instead (boundaries None): block(id) is then one
load of block_map[id] (the BY_MAP flag), for ids that are not frequency-sorted.

Kernels (all accumulate in fp32, mask the K tail, never synchronise with the host):

* ``_scale_rows_kernel`` — out[b] = src[row(b)] ⊙ α[block(id_b)] (⊙ v_b). With
  GATHER=True, row(b) = id_b: the forward. With GATHER=False, row(b) = b and src is the
  output gradient: the per-lookup weight gradients of the sparse backward. With
  SCATTER_ADD, the opt-in non-deterministic dense weight gradient (atomic adds; hot rows
  serialise on their addresses).
* ``_alpha_grad_partial_kernel`` + ``_alpha_grad_finish_kernel`` — the α step:
  per-program (L, K) partials Σ E[id] ⊙ dout (⊙ v) accumulated with a one-hot matmul
  (no sort, no atomics), then one program per block row sums the partials (a tile of
  them per step, in a fixed order), adds λ·sign(α), normalizes by mean_k |g| + eps and
  writes dα. The partial kernel also writes dvalues when asked.
* The α step's partial kernel reads lookup i's output gradient as the row dout[i]; with
  DOUT_INDEX (the bag op, ``mixemb.kernels.soft_select_bag``) as the row dout_index[i] of
  dout, none where it is dout's row count, divided by counts[row] with DOUT_COUNTS (mean).
  Both flags are constexprs: off, the code is not compiled in.

Launchers validate, allocate and pick block sizes (``alpha_step``: the α step's launches,
shared with the bag op). The weights step (dense deterministic gradient, fused optimizer
update) is ``mixemb.kernels.soft_select_weights``; the op family (registered ops,
autograd, backend choice) lives in ``mixemb.ops.soft_select``.
"""

from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl

#: True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1 at import).
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

MAX_BLOCKS = 64
MAX_DIM = 1024


@triton.jit
def _block_of(ids, valid, bounds_ptr, num_blocks, L_PAD: tl.constexpr, BY_MAP: tl.constexpr):
    """Block index of every id: with BY_MAP, block_map[id] (bounds_ptr is the map; ids
    not ``valid`` read block 0, and a value outside [0, L) is clamped, so α is never read
    out of bounds); else the number of inner boundaries b_1..b_{L-1} ≤ id."""
    if BY_MAP:
        blocks = tl.load(bounds_ptr + ids, mask=valid, other=0)
        return tl.minimum(tl.maximum(blocks, 0), num_blocks - 1).to(tl.int64)
    offs = tl.arange(0, L_PAD)
    live = offs < num_blocks - 1
    inner = tl.load(bounds_ptr + 1 + offs, mask=live, other=0)
    hit = (ids[:, None] >= inner[None, :]) & live[None, :]
    return tl.sum(hit.to(tl.int32), axis=1).to(tl.int64)


@triton.jit
def _scale_rows_kernel(
    src_ptr,
    alpha_ptr,
    bounds_ptr,
    ids_ptr,
    values_ptr,
    out_ptr,
    num_lookups,
    num_rows,
    dim,
    num_blocks,
    stride_src,
    stride_alpha,
    GATHER: tl.constexpr,
    SCATTER_ADD: tl.constexpr,
    HAS_VALUES: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_K: tl.constexpr,
    L_PAD: tl.constexpr,
    BY_MAP: tl.constexpr,
    ACC: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    pid_k = tl.program_id(1).to(tl.int64)
    lookups = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    live = lookups < num_lookups
    ids = tl.load(ids_ptr + lookups, mask=live, other=0).to(tl.int64)
    # an out-of-range id reads nothing and yields a zero row (the launcher checks on request)
    valid = live & (ids >= 0) & (ids < num_rows)
    blocks = _block_of(ids, valid, bounds_ptr, num_blocks, L_PAD, BY_MAP)
    mask = valid[:, None] & (cols < dim)[None, :]
    rows = ids if GATHER else lookups
    src = tl.load(src_ptr + rows[:, None] * stride_src + cols[None, :], mask=mask, other=0.0)
    scale = tl.load(
        alpha_ptr + blocks[:, None] * stride_alpha + cols[None, :], mask=mask, other=0.0
    )
    out = src.to(ACC) * scale.to(ACC)
    if HAS_VALUES:
        v = tl.load(values_ptr + lookups, mask=live, other=0.0)
        out = out * v.to(ACC)[:, None]
    if SCATTER_ADD:
        # the dense weight gradient with atomics: out[id] += row (hot rows contend)
        tl.atomic_add(out_ptr + ids[:, None] * dim + cols[None, :], out, mask=mask, sem="relaxed")
    else:
        out_mask = live[:, None] & (cols < dim)[None, :]
        tl.store(
            out_ptr + lookups[:, None] * dim + cols[None, :],
            out.to(out_ptr.dtype.element_ty),
            mask=out_mask,
        )


@triton.jit
def _alpha_grad_partial_kernel(
    weight_ptr,
    alpha_ptr,
    bounds_ptr,
    ids_ptr,
    values_ptr,
    dout_ptr,
    dout_index_ptr,
    counts_ptr,
    partial_ptr,
    dvalues_ptr,
    num_lookups,
    num_rows,
    num_dout_rows,
    dim,
    num_blocks,
    stride_w,
    stride_dout,
    stride_alpha,
    tiles_per_program,
    HAS_VALUES: tl.constexpr,
    NEED_ALPHA: tl.constexpr,
    NEED_VALUES: tl.constexpr,
    DOUT_INDEX: tl.constexpr,
    DOUT_COUNTS: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_K: tl.constexpr,
    L_PAD: tl.constexpr,
    BY_MAP: tl.constexpr,
    ACC: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    pid_k = tl.program_id(1).to(tl.int64)
    cols = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    cmask = cols < dim
    block_ids = tl.arange(0, L_PAD)
    acc = tl.zeros([L_PAD, BLOCK_K], dtype=ACC)
    # each program owns a contiguous range of lookup tiles: one (L, K) partial per program
    for t in range(tiles_per_program):
        lookups = (pid * tiles_per_program + t) * BLOCK_B + tl.arange(0, BLOCK_B)
        live = lookups < num_lookups
        if DOUT_INDEX:  # the bag: lookup i's dout row is dout_index[i] (num_dout_rows: none)
            drows = tl.load(dout_index_ptr + lookups, mask=live, other=num_dout_rows)
            drows = drows.to(tl.int64)
            kept = drows < num_dout_rows
        else:
            drows = lookups
            kept = live
        ids = tl.load(ids_ptr + lookups, mask=kept, other=0).to(tl.int64)
        valid = kept & (ids >= 0) & (ids < num_rows)
        blocks = _block_of(ids, valid, bounds_ptr, num_blocks, L_PAD, BY_MAP)
        mask = valid[:, None] & cmask[None, :]
        e = tl.load(weight_ptr + ids[:, None] * stride_w + cols[None, :], mask=mask, other=0.0)
        d = tl.load(dout_ptr + drows[:, None] * stride_dout + cols[None, :], mask=mask, other=0.0)
        d = d.to(ACC)
        if DOUT_COUNTS:  # mean pooling: the row's gradient is shared by its count
            d = d / tl.load(counts_ptr + drows, mask=valid, other=1.0).to(ACC)[:, None]
        prod = e.to(ACC) * d
        if NEED_VALUES:
            a = tl.load(
                alpha_ptr + blocks[:, None] * stride_alpha + cols[None, :], mask=mask, other=0.0
            )
            dv = tl.sum(prod * a.to(ACC), axis=1)
            tl.store(dvalues_ptr + pid_k * num_lookups + lookups, dv, mask=live)
        if NEED_ALPHA:
            if HAS_VALUES:
                v = tl.load(values_ptr + lookups, mask=valid, other=0.0)
                prod = prod * v.to(ACC)[:, None]
            onehot = ((blocks[:, None] == block_ids[None, :]) & valid[:, None]).to(ACC)
            # (L_PAD, BLOCK_B) @ (BLOCK_B, BLOCK_K): the per-block sum, exact fp32 products
            acc += tl.dot(tl.trans(onehot), prod, input_precision="ieee")
    if NEED_ALPHA:
        out = partial_ptr + pid * num_blocks * dim + block_ids[:, None] * dim + cols[None, :]
        tl.store(out, acc, mask=(block_ids < num_blocks)[:, None] & cmask[None, :])


@triton.jit
def _alpha_grad_finish_kernel(
    partial_ptr,
    alpha_ptr,
    dalpha_ptr,
    num_partials,
    num_blocks,
    dim,
    stride_alpha,
    l1,
    eps,
    NORMALIZE: tl.constexpr,
    K_PAD: tl.constexpr,
    P_BLOCK: tl.constexpr,
    ACC: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, K_PAD)
    cmask = cols < dim
    parts = tl.arange(0, P_BLOCK)
    g = tl.zeros([K_PAD], dtype=ACC)
    # P_BLOCK partials at a time, each chunk summed by one fixed reduction tree, the chunks
    # in order: bitwise reproducible for a given number of partials
    for p0 in range(0, num_partials, P_BLOCK):
        p = p0 + parts
        tile = tl.load(
            partial_ptr + (p[:, None] * num_blocks + row) * dim + cols[None, :],
            mask=(p < num_partials)[:, None] & cmask[None, :],
            other=0.0,
        )
        g += tl.sum(tile, axis=0)
    a = tl.load(alpha_ptr + row * stride_alpha + cols, mask=cmask, other=0.0).to(ACC)
    sign = tl.where(a > 0, 1.0, tl.where(a < 0, -1.0, 0.0))
    g = g + l1 * sign
    if NORMALIZE:
        mean_abs = tl.sum(tl.where(cmask, tl.abs(g), 0.0), axis=0) / dim
        g = g / (mean_abs + eps)
    tl.store(dalpha_ptr + row * dim + cols, g.to(dalpha_ptr.dtype.element_ty), mask=cmask)


# ----------------------------------------------------------------------------- launchers


def _pow2(n: int, floor: int = 1) -> int:
    return max(floor, triton.next_power_of_2(max(int(n), 1)))


def _acc(dtype: torch.dtype):
    """(Triton, torch) accumulation dtype: fp64 for fp64 tables (gradcheck), else fp32."""
    return (tl.float64, torch.float64) if dtype == torch.float64 else (tl.float32, torch.float32)


def _finish_rows(dim: int) -> int:
    """Partials the α finish kernel sums per step: a tile of ~4K elements."""
    return max(1, 4096 // _pow2(dim, 16))


def _l_pad(num_blocks: int) -> int:
    return _pow2(num_blocks, 16)  # tl.dot needs every dimension ≥ 16


def _tile(dim: int) -> tuple[int, int]:
    """(BLOCK_B, BLOCK_K) for gathers: K tiles of ≤ 128 columns, ~4K elements a program."""
    block_k = min(_pow2(dim, 16), 128)
    block_b = max(16, min(128, 4096 // block_k))
    return block_b, block_k


def _num_programs_cap(device: torch.device) -> int:
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # the interpreter runs programs one after another


def _on_device(t: torch.Tensor):
    """Triton launches on the *current* CUDA device: make it the tensor's (multi-GPU)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def row_strided(t: torch.Tensor) -> bool:
    """True when the kernels can read the (R, K) matrix t in place: unit column stride
    (any row stride), or a single column."""
    return t.dim() == 2 and (t.stride(1) == 1 or t.shape[1] <= 1)


def check_dout(dout: torch.Tensor, rows: int, dim: int, device: torch.device) -> None:
    """dout must be (rows, K) on device with unit column stride (any row stride)."""
    if dout.shape != (rows, dim) or not row_strided(dout) or dout.device != device:
        raise ValueError(
            f"dout must be a ({rows}, {dim}) tensor with unit column stride on {device}, got "
            f"{tuple(dout.shape)} with strides {tuple(dout.stride())} on {dout.device}"
        )


def _check_dout(dout: torch.Tensor, ids: torch.Tensor, dim: int, device: torch.device) -> None:
    check_dout(dout, ids.numel(), dim, device)


def _blocks(boundaries, block_map):
    """(the tensor the kernels read blocks from, BY_MAP)."""
    return (boundaries, False) if block_map is None else (block_map, True)


def check_inputs(weight, alpha, boundaries, ids, values, block_map=None) -> None:
    """Shape/dtype/device checks of every launcher (cheap, no device reads)."""
    if not row_strided(weight):
        raise ValueError(
            f"weight must be an (N, K) tensor with unit column stride (any row stride), got "
            f"shape {tuple(weight.shape)} with strides {tuple(weight.stride())}"
        )
    num_blocks, dim = alpha.shape
    if dim != weight.shape[1] or alpha.stride(1) != 1:
        raise ValueError(f"alpha must be (L, K={weight.shape[1]}) with unit column stride")
    if not 1 <= num_blocks <= MAX_BLOCKS:
        raise ValueError(
            f"the Triton backend supports 1 ≤ L ≤ {MAX_BLOCKS} blocks, got {num_blocks}"
        )
    if not 1 <= dim <= MAX_DIM:
        raise ValueError(f"the Triton backend supports 1 ≤ K ≤ {MAX_DIM}, got {dim}")
    if (boundaries is None) == (block_map is None):
        raise ValueError("give exactly one of boundaries and block_map (the other None)")
    if block_map is not None and (
        block_map.dtype != torch.int64
        or block_map.shape != (weight.shape[0],)
        or not block_map.is_contiguous()
    ):
        raise ValueError(f"block_map must be contiguous int64 (N,) = ({weight.shape[0]},)")
    if boundaries is not None and (
        boundaries.dtype != torch.int64
        or boundaries.numel() != num_blocks + 1
        or not boundaries.is_contiguous()
    ):
        raise ValueError(f"boundaries must be contiguous int64 (L+1,) = ({num_blocks + 1},)")
    if ids.dtype not in (torch.int32, torch.int64) or not ids.is_contiguous():
        raise ValueError(f"ids must be contiguous int32/int64, got {ids.dtype}")
    named = (
        ("alpha", alpha), ("boundaries", boundaries), ("block_map", block_map), ("ids", ids),
        ("values", values),
    )  # fmt: skip
    for name, t in named:
        if t is not None and t.device != weight.device:
            raise ValueError(f"{name} is on {t.device}, weight on {weight.device}")
    if values is not None and (values.shape != ids.shape or not values.is_contiguous()):
        raise ValueError(f"values must be contiguous with the shape of ids {tuple(ids.shape)}")


def soft_select_fwd(weight, alpha, boundaries, ids, values=None, *, block_map=None,
                    out_dtype=None):  # fmt: skip
    """out (B, K) = weight[ids] ⊙ alpha[block(ids)] (⊙ values[:, None]).

    weight: (N, K) float32/float16/bfloat16, unit column stride (read through its row
    stride, never copied). alpha: (L, K), L ≤ 64.
    boundaries: (L+1,) int64, or None with block_map (N,) int64 in [0, L).
    ids: (B,) int32/int64. values: (B,) or None.
    out_dtype: default torch.promote_types(weight.dtype, alpha.dtype).
    """
    check_inputs(weight, alpha, boundaries, ids, values, block_map)
    out_dtype = out_dtype or torch.promote_types(weight.dtype, alpha.dtype)
    return scale_rows(
        weight, alpha, boundaries, ids, values, gather=True, out_dtype=out_dtype,
        block_map=block_map,
    )  # fmt: skip


def scale_rows(
    src, alpha, boundaries, ids, values, *, gather, out_dtype, num_rows=None, scatter_into=None,
    block_map=None,
):  # fmt: skip
    """The shared launcher of the forward (gather=True), of per-lookup row grads
    (gather=False) and, with ``scatter_into`` (num_rows, K) in the accumulation dtype, of
    the atomic dense weight gradient (rows added at their ids; returns scatter_into)."""
    num_lookups = ids.numel()
    dim = src.shape[1]
    if scatter_into is not None:
        out = scatter_into
    else:
        out = torch.empty((num_lookups, dim), dtype=out_dtype, device=src.device)
    if num_lookups == 0:
        return out
    block_b, block_k = _tile(dim)
    grid = (triton.cdiv(num_lookups, block_b), triton.cdiv(dim, block_k))
    blocks, by_map = _blocks(boundaries, block_map)
    with _on_device(src):
        _scale_rows_kernel[grid](
            src, alpha, blocks, ids, values if values is not None else src, out,
            num_lookups, num_rows if num_rows is not None else src.shape[0], dim,
            alpha.shape[0], src.stride(0), alpha.stride(0),
            GATHER=gather, SCATTER_ADD=scatter_into is not None, HAS_VALUES=values is not None,
            BLOCK_B=block_b, BLOCK_K=block_k, L_PAD=_l_pad(alpha.shape[0]), BY_MAP=by_map,
            ACC=_acc(out.dtype if scatter_into is not None else src.dtype)[0],
        )  # fmt: skip
    return out


def soft_select_bwd_alpha(
    dout, weight, alpha, boundaries, ids, values=None, *,
    need_alpha=True, need_values=False, normalize=True, l1=0.0, eps=1e-8, block_map=None,
):  # fmt: skip
    """The α step's backward: (dalpha (L, K) in alpha's dtype or None, dvalues (B,) or None).

    dout: (B, K), unit column stride (any row stride).
    dalpha = normalize?(Σ_block weight[id] ⊙ dout (⊙ v) + l1·sign(alpha));
    dvalues[b] = Σ_k weight[id] ⊙ alpha[block] ⊙ dout.
    Deterministic: fixed partition of lookups into programs and a fixed-order sum.
    """
    check_inputs(weight, alpha, boundaries, ids, values, block_map)
    _check_dout(dout, ids, alpha.shape[1], weight.device)
    return alpha_step(
        dout, weight, alpha, boundaries, block_map, ids, values, need_alpha=need_alpha,
        need_values=need_values, normalize=normalize, l1=l1, eps=eps,
    )  # fmt: skip


def alpha_step(
    dout, weight, alpha, boundaries, block_map, ids, values, *, need_alpha, need_values,
    normalize, l1, eps, dout_index=None, counts=None,
):  # fmt: skip
    """The α step's launches, inputs checked: (dalpha (L, K) in alpha's dtype or None,
    dvalues (B,) in values' dtype (weight's without values) or None).

    dout: (B, K), lookup i's output gradient its row i; or, with dout_index (B,) int32,
    (R, K) with lookup i's the row dout_index[i] (none where dout_index[i] = R), divided
    by counts (R,) in the accumulation dtype when given (the bag op: R bags, counts their
    sizes for mean).
    """
    blocks, by_map = _blocks(boundaries, block_map)
    num_lookups = ids.numel()
    num_blocks, dim = alpha.shape
    device = weight.device
    block_b, block_k = _tile(dim)
    num_k_tiles = triton.cdiv(dim, block_k)
    tiles = triton.cdiv(num_lookups, block_b)
    programs = max(1, min(tiles, _num_programs_cap(device)))
    tiles_per_program = triton.cdiv(tiles, programs) if tiles else 0
    programs = triton.cdiv(tiles, tiles_per_program) if tiles else 1
    # every program writes its whole (L, K) tile; zeros only when no program runs
    alloc = torch.empty if num_lookups and need_alpha else torch.zeros
    acc_tl, acc_torch = _acc(weight.dtype)
    partial = alloc((programs, num_blocks if need_alpha else 0, dim), dtype=acc_torch,
                    device=device)  # fmt: skip
    dv = torch.empty((num_k_tiles, num_lookups if need_values else 0), dtype=acc_torch,
                     device=device)  # fmt: skip
    with _on_device(weight):
        if num_lookups and (need_alpha or need_values):
            _alpha_grad_partial_kernel[(programs, num_k_tiles)](
                weight, alpha, blocks, ids, values if values is not None else weight, dout,
                dout_index if dout_index is not None else ids,
                counts if counts is not None else partial, partial, dv,
                num_lookups, weight.shape[0], dout.shape[0], dim, num_blocks, weight.stride(0),
                dout.stride(0), alpha.stride(0), tiles_per_program,
                HAS_VALUES=values is not None, NEED_ALPHA=need_alpha, NEED_VALUES=need_values,
                DOUT_INDEX=dout_index is not None, DOUT_COUNTS=counts is not None,
                BLOCK_B=block_b, BLOCK_K=block_k, L_PAD=_l_pad(num_blocks), BY_MAP=by_map,
                ACC=acc_tl,
            )  # fmt: skip
        dalpha = None
        if need_alpha:
            dalpha = torch.empty((num_blocks, dim), dtype=alpha.dtype, device=device)
            _alpha_grad_finish_kernel[(num_blocks,)](
                partial, alpha, dalpha, programs, num_blocks, dim, alpha.stride(0),
                float(l1), float(eps), NORMALIZE=normalize, K_PAD=_pow2(dim, 16),
                P_BLOCK=_finish_rows(dim), ACC=acc_tl,
            )  # fmt: skip
    if not need_values:
        return dalpha, None
    dv = dv[0] if num_k_tiles == 1 else dv.sum(0)
    return dalpha, dv.to(values.dtype if values is not None else weight.dtype)


def soft_select_bwd_rows(dout, weight, alpha, boundaries, ids, values=None, *, block_map=None):
    """Per-lookup weight gradients (B, K) in weight's dtype: dout ⊙ alpha[block] (⊙ v);
    dout (B, K) with unit column stride (any row stride).

    With ids they form nn.Embedding(sparse=True)'s uncoalesced sparse gradient.
    """
    check_inputs(weight, alpha, boundaries, ids, values, block_map)
    _check_dout(dout, ids, weight.shape[1], weight.device)
    return scale_rows(
        dout, alpha, boundaries, ids, values,
        gather=False, out_dtype=weight.dtype, num_rows=weight.shape[0], block_map=block_map,
    )  # fmt: skip
