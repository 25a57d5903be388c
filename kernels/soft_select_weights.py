"""Triton kernels of the DNIS lookup × α op's weights step and their launchers.

Notation as in ``mixemb.kernels.soft_select`` (B lookups ids (B,), table E (N, K), α (L, K),
the block of an id from boundaries (L+1,) or a block_map (N,)). The weights step gives each
row of E the gradient α[block(row)] ⊙ Σ_{lookups of row} dout (⊙ v), written as a dense
(N, K) gradient or applied to the row in place by a fused optimizer.

Kernels (fp32 accumulation, fp64 for fp64 tables; deterministic, no atomics, no host
syncs):

* ``_segment_rows_kernel`` + ``_segment_carry_kernel`` — the ids sorted once with
  ``torch.sort`` (int32 keys when the table has fewer than 2^31 rows: fewer radix passes
  on a GPU, the same stable order, so the same results bit for bit): fixed-size chunks of
  SEGMENT_CHUNK sorted positions, each reduced by one program; a run of equal ids that
  crosses chunk edges (a hot row) leaves one partial per chunk, summed in a fixed order
  by the chunk where the run starts (a tile of CARRY_TILE chunks per step, so a run over
  thousands of chunks is not a serial chain). Every unique id is finished exactly once,
  by one program, so the result is deterministic and needs no atomics — which also lets
  the finishing step apply an optimizer to the row in place (SGD, row-wise Adagrad)
  instead of writing a gradient. The table is written through its row stride, so a
  column slice of a wider table is updated in place.
* An fp16 / bf16 table's updated row is rounded stochastically (STOCHASTIC): to the
  representable neighbour above or below the fp32 result with probabilities that make
  the rounding unbiased, the uniform draw ``tl.rand(seed, row · K + column)`` (Philox:
  the launcher's seed, advanced by the caller per update, and a distinct offset per
  value). Round-to-nearest loses every update below half an ulp of the weight.
* ``_segment_rows_kernel`` reads lookup i's output gradient as the row dout[i] (through
  dout's row stride); with DOUT_INDEX (the bag op, ``mixemb.kernels.soft_select_bag``) as
  the row dout_index[i] of dout, none where it is dout's row count, divided by counts[row]
  with DOUT_COUNTS (mean), as the α step's partial kernel does. Both flags are
  constexprs: off, the code is not compiled in.

The opt-in non-deterministic dense gradient (``deterministic=False``) is the forward
module's ``scale_rows`` with atomic adds. Launchers: ``soft_select_bwd_weight`` (validates)
and ``weights_step`` (the launches, shared with the bag op); ``sort_keys`` picks the sort's
key dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mixemb.kernels.soft_select import (
    _acc,
    _block_of,
    _blocks,
    _check_dout,
    _l_pad,
    _on_device,
    _pow2,
    check_inputs,
    scale_rows,
)

#: sorted positions reduced by one program of the weights step
SEGMENT_CHUNK = 32
#: most carries (chunks of one hot run) the carry kernel reads per step; a power of two
CARRY_TILE = 32

OPTIMIZERS = {"none": 0, "sgd": 1, "rowwise_adagrad": 2}
#: the table dtypes whose fused updates can round stochastically
HALF_DTYPES = (torch.float16, torch.bfloat16)


@triton.jit
def _and(vec_mask, flag):
    """vec_mask & flag with the scalar flag broadcast explicitly (the interpreter's
    implicit scalar-vector broadcast of int1 gives a mask its loads reject)."""
    return vec_mask & (tl.zeros(vec_mask.shape, tl.int1) | flag)


@triton.jit
def _stochastic_round(x, u, DST: tl.constexpr):
    """x (fp32) rounded to DST (fp16 / bf16), returned as the fp32 value of the result: the
    neighbour farther from zero with probability (|x| - |near|) / (|far| - |near|), u
    uniform in [0, 1) — unbiased. Exact values, ±inf and nan round to nearest."""
    nearest = x.to(DST)
    nf = nearest.to(tl.float32)
    away = tl.abs(x) > tl.abs(nf)
    # the other neighbour: one step of the integer encoding away from or toward zero
    step = tl.where(away, 1, -1).to(tl.int16)
    other = (nearest.to(tl.int16, bitcast=True) + step).to(DST, bitcast=True).to(tl.float32)
    near = tl.where(away, nf, other)
    far = tl.where(away, other, nf)
    keep = (nf == x) | (tl.abs(nf) == float("inf")) | (x != x)
    gap = tl.where(keep, 1.0, tl.abs(far) - tl.abs(near))
    p_far = (tl.abs(x) - tl.abs(near)) / gap
    return tl.where(keep, nf, tl.where(u < p_far, far, near))


@triton.jit
def _finish_row(
    row_id,
    g,
    cols,
    cmask,
    dim,
    do_it,
    alpha_ptr,
    bounds_ptr,
    num_blocks,
    stride_alpha,
    out_ptr,
    stride_out,
    state_ptr,
    lr_ptr,
    opt_eps,
    seed,
    OPTIMIZER: tl.constexpr,
    STOCHASTIC: tl.constexpr,
    L_PAD: tl.constexpr,
    BY_MAP: tl.constexpr,
    ACC: tl.constexpr,
):
    """Scale a row's summed output gradient by α[block(row)] and write or apply it."""
    one = _and(tl.full([1], 1, tl.int1), do_it)
    row = tl.zeros([1], tl.int64) + row_id
    block = tl.sum(_block_of(row, one, bounds_ptr, num_blocks, L_PAD, BY_MAP))
    mask = _and(cmask, do_it)
    a = tl.load(alpha_ptr + block * stride_alpha + cols, mask=mask, other=0.0)
    grad = g * a.to(ACC)
    dst = out_ptr + row_id * stride_out + cols
    if OPTIMIZER == 0:
        tl.store(dst, grad.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        lr = tl.load(lr_ptr).to(ACC)
        w = tl.load(dst, mask=mask, other=0.0).to(ACC)
        if OPTIMIZER == 1:
            w = w - lr * grad
        else:
            # row-wise Adagrad (FBGEMM's): one accumulator per row, mean of g² over K
            m_old = tl.load(state_ptr + row_id + tl.zeros([1], tl.int64), mask=one, other=0.0)
            m = tl.sum(m_old, axis=0) + tl.sum(tl.where(cmask, grad * grad, 0.0), axis=0) / dim
            tl.store(
                state_ptr + row_id + tl.zeros([1], tl.int64),
                (tl.zeros([1], ACC) + m).to(state_ptr.dtype.element_ty),
                mask=one,
            )
            if ACC == tl.float32:
                root = tl.sqrt_rn(m)  # IEEE sqrt, like torch's (tl.sqrt is approximate)
            else:
                root = tl.sqrt(m)  # fp64: sqrt.rn.f64 already
            w = w - lr * grad / (root + opt_eps)
        if STOCHASTIC:
            u = tl.rand(seed, row_id * dim + cols)
            w = _stochastic_round(w, u, out_ptr.dtype.element_ty)
        tl.store(dst, w.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["seed"])
def _segment_rows_kernel(
    sorted_ids_ptr,
    perm_ptr,
    dout_ptr,
    dout_index_ptr,
    counts_ptr,
    values_ptr,
    alpha_ptr,
    bounds_ptr,
    out_ptr,
    state_ptr,
    lr_ptr,
    carry_first_ptr,
    carry_last_ptr,
    num_lookups,
    num_rows,
    num_dout_rows,
    dim,
    num_blocks,
    stride_dout,
    stride_alpha,
    stride_out,
    opt_eps,
    seed,
    HAS_VALUES: tl.constexpr,
    DOUT_INDEX: tl.constexpr,
    DOUT_COUNTS: tl.constexpr,
    OPTIMIZER: tl.constexpr,
    STOCHASTIC: tl.constexpr,
    CHUNK: tl.constexpr,
    K_PAD: tl.constexpr,
    L_PAD: tl.constexpr,
    BY_MAP: tl.constexpr,
    ACC: tl.constexpr,
):
    chunk = tl.program_id(0).to(tl.int64)
    start = chunk * CHUNK
    cols = tl.arange(0, K_PAD)
    cmask = cols < dim
    prev_id = tl.load(sorted_ids_ptr + start - 1, mask=start > 0, other=-1)
    first_id = tl.load(sorted_ids_ptr + start)
    # the chunk's first run began in an earlier chunk: its sum is a carry, not a row
    cont_prev = first_id == prev_id
    acc = tl.zeros([K_PAD], dtype=ACC)
    for i in range(CHUNK):
        pos = start + i
        live = pos < num_lookups
        # int64 before forming offsets: the sort keys may be int32
        row_id = tl.load(sorted_ids_ptr + pos, mask=live, other=-1).to(tl.int64)
        src = tl.load(perm_ptr + pos, mask=live, other=0)
        if DOUT_INDEX:  # the bag: the lookup's dout row through the index (as the α step)
            drow = tl.load(dout_index_ptr + src, mask=live, other=num_dout_rows).to(tl.int64)
            kept = live & (drow < num_dout_rows)
        else:
            drow = src
            kept = live
        d = tl.load(dout_ptr + drow * stride_dout + cols, mask=_and(cmask, kept), other=0.0)
        d = d.to(ACC)
        if DOUT_COUNTS:
            d = d / tl.load(counts_ptr + drow, mask=kept, other=1.0).to(ACC)
        if HAS_VALUES:
            d = d * tl.load(values_ptr + src, mask=kept, other=0.0).to(ACC)
        acc += d
        has_next = pos + 1 < num_lookups
        next_id = tl.load(sorted_ids_ptr + pos + 1, mask=has_next, other=-1)
        run_ends = live & ((~has_next) | (next_id != row_id) | (i == CHUNK - 1))
        cont_next = has_next & (next_id == row_id)  # only possible at the chunk's end
        valid = (row_id >= 0) & (row_id < num_rows)
        tl.store(carry_first_ptr + chunk * dim + cols, acc, mask=_and(cmask, run_ends & cont_prev))
        tl.store(
            carry_last_ptr + chunk * dim + cols,
            acc,
            mask=_and(cmask, run_ends & (~cont_prev) & cont_next),
        )
        done = run_ends & (~cont_prev) & (~cont_next) & valid
        _finish_row(
            row_id, acc, cols, cmask, dim, done, alpha_ptr, bounds_ptr, num_blocks,
            stride_alpha, out_ptr, stride_out, state_ptr, lr_ptr, opt_eps, seed, OPTIMIZER,
            STOCHASTIC, L_PAD, BY_MAP, ACC,
        )  # fmt: skip
        acc = tl.where(run_ends, 0.0, acc)
        cont_prev = cont_prev & (~run_ends)


@triton.jit(do_not_specialize=["seed"])
def _segment_carry_kernel(
    sorted_ids_ptr,
    alpha_ptr,
    bounds_ptr,
    out_ptr,
    state_ptr,
    lr_ptr,
    carry_first_ptr,
    carry_last_ptr,
    num_lookups,
    num_rows,
    dim,
    num_blocks,
    stride_alpha,
    stride_out,
    opt_eps,
    seed,
    OPTIMIZER: tl.constexpr,
    STOCHASTIC: tl.constexpr,
    CHUNK: tl.constexpr,
    TILE: tl.constexpr,
    K_PAD: tl.constexpr,
    L_PAD: tl.constexpr,
    BY_MAP: tl.constexpr,
    ACC: tl.constexpr,
):
    chunk = tl.program_id(0).to(tl.int64)
    start = chunk * CHUNK
    end = start + CHUNK
    cols = tl.arange(0, K_PAD)
    cmask = cols < dim
    has_next = end < num_lookups
    last_id = tl.load(sorted_ids_ptr + tl.minimum(end, num_lookups) - 1).to(tl.int64)
    next_id = tl.load(sorted_ids_ptr + end, mask=has_next, other=-1)
    first_id = tl.load(sorted_ids_ptr + start)
    prev_id = tl.load(sorted_ids_ptr + start - 1, mask=start > 0, other=-1)
    whole_chunk_continued = (first_id == last_id) & (first_id == prev_id)
    # the chunk where a crossing run starts owns it and adds the later chunks' carries
    owner = has_next & (next_id == last_id) & (~whole_chunk_continued)
    acc = tl.load(carry_last_ptr + chunk * dim + cols, mask=_and(cmask, owner), other=0.0)
    # ids are sorted, so the later chunks of the run are exactly the next chunks that
    # start with last_id: read their carries TILE at a time (a hot id's run can span
    # thousands of chunks; one chunk per step would be a serial chain of loads)
    tiles = tl.arange(0, TILE)
    j0 = chunk + 1
    going = owner
    while going:
        j_start = (j0 + tiles) * CHUNK
        inside = j_start < num_lookups
        j_first = tl.load(sorted_ids_ptr + j_start, mask=inside, other=0)
        in_run = inside & (j_first == last_id)
        part = tl.load(
            carry_first_ptr + (j0 + tiles)[:, None] * dim + cols[None, :],
            mask=in_run[:, None] & cmask[None, :],
            other=0.0,
        )
        acc += tl.sum(part, axis=0)
        going = tl.sum(in_run.to(tl.int32), axis=0) == TILE  # the whole tile was in the run
        j0 += TILE
    valid = (last_id >= 0) & (last_id < num_rows)
    _finish_row(
        last_id, acc, cols, cmask, dim, owner & valid, alpha_ptr, bounds_ptr, num_blocks,
        stride_alpha, out_ptr, stride_out, state_ptr, lr_ptr, opt_eps, seed, OPTIMIZER,
        STOCHASTIC, L_PAD, BY_MAP, ACC,
    )  # fmt: skip


# ----------------------------------------------------------------------------- launchers


def soft_select_bwd_weight(
    dout, weight, alpha, boundaries, ids, values=None, *,
    deterministic=True, optimizer="none", lr=None, state=None, optimizer_eps=1e-8,
    block_map=None, stochastic_rounding=False, seed=0,
):  # fmt: skip
    """The weights step's backward: a dense (N, K) gradient, or an in-place update.

    dout: (B, K), weight: (N, K), each with unit column stride (any row stride).
    optimizer="none": returns dweight (N, K) contiguous in weight's dtype, each row
    α[block] ⊙ Σ_lookups dout (⊙ v). deterministic=True sorts the ids once and reduces
    runs (bitwise reproducible, no atomics); False adds with atomics (opt-in, hot rows
    contend).
    optimizer="sgd" | "rowwise_adagrad": updates weight (and state, (N,) float32, the
    row-wise Adagrad accumulator) in place with lr, a 1-element float32 tensor on the
    weight's device (a runtime value: changing it does not recompile); returns None.
    stochastic_rounding (default False): an fp16 / bf16 table's updated values are rounded
    stochastically with the Philox stream of ``seed`` (an int in [0, 2^63); give each
    update its own); ignored for fp32 / fp64 tables and without an optimizer.
    """
    check_inputs(weight, alpha, boundaries, ids, values, block_map)
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {tuple(OPTIMIZERS)}, got {optimizer!r}")
    num_rows, dim = weight.shape
    device = weight.device
    fused = optimizer != "none"
    _check_dout(dout, ids, dim, device)
    acc_torch = _acc(weight.dtype)[1]
    if fused:
        if lr is None or lr.numel() != 1 or lr.device != device:
            raise ValueError("a fused optimizer needs lr as a 1-element tensor on weight's device")
        if optimizer == "rowwise_adagrad" and (
            state is None or state.shape != (num_rows,) or state.dtype != torch.float32
        ):
            raise ValueError(f"rowwise_adagrad needs state: ({num_rows},) float32")
        if num_rows > 1 and weight.stride(0) < dim:
            raise ValueError(
                f"a fused optimizer writes the table: its rows must not overlap, got stride(0) "
                f"{weight.stride(0)} < K = {dim}"
            )
        if not 0 <= int(seed) < 2**63:
            raise ValueError(f"seed must be in [0, 2^63), got {seed}")
    if not fused and not deterministic:
        acc = torch.zeros((num_rows, dim), dtype=acc_torch, device=device)
        scale_rows(
            dout, alpha, boundaries, ids, values, gather=False, out_dtype=acc_torch,
            num_rows=num_rows, scatter_into=acc, block_map=block_map,
        )  # fmt: skip
        return acc if weight.dtype == acc_torch else acc.to(weight.dtype)
    out = weight if fused else torch.zeros((num_rows, dim), dtype=weight.dtype, device=device)
    weights_step(
        dout, out, alpha, boundaries, block_map, ids, values, optimizer=optimizer, lr=lr,
        state=state, optimizer_eps=optimizer_eps,
        stochastic_rounding=fused and stochastic_rounding and weight.dtype in HALF_DTYPES,
        seed=int(seed),
    )  # fmt: skip
    return None if fused else out


def sort_keys(ids: torch.Tensor, num_rows: int) -> torch.Tensor:
    """The keys the weights step sorts: ids (B,) int32 as they are; int64 ids as int32
    when num_rows < 2^31 (fewer radix passes), clamped to [-1, num_rows] first so an
    unchecked out-of-range id stays out of range instead of wrapping onto a row (the
    order of the in-range ids, and so every result, is unchanged); else int64."""
    if ids.dtype == torch.int32:
        return ids
    if num_rows < 2**31:
        return ids.clamp(-1, num_rows).to(torch.int32)
    return ids


def weights_step(
    dout, out, alpha, boundaries, block_map, ids, values, *, optimizer="none", lr=None,
    state=None, optimizer_eps=1e-8, dout_index=None, counts=None, stochastic_rounding=False,
    seed=0,
):  # fmt: skip
    """The deterministic weights step's launches, inputs checked: each row of out (N, K)
    (zeros, or the weight itself for an optimizer; any row stride) gets α[block] ⊙ the sum
    of its lookups' output gradients, written or applied — lookup i's the row dout[i]
    (⊙ v_i), or with dout_index and counts the row dout[dout_index[i]] as in
    :func:`alpha_step`; dout (R, K) with any row stride. The ids are sorted once; runs are
    reduced per chunk of SEGMENT_CHUNK sorted positions and the runs crossing chunks
    finished from their carries (bitwise reproducible). stochastic_rounding: round the
    updated fp16 / bf16 rows stochastically with the stream of ``seed``."""
    blocks, by_map = _blocks(boundaries, block_map)
    num_lookups = ids.numel()
    num_rows, dim = out.shape
    num_blocks = alpha.shape[0]
    device = out.device
    if num_lookups == 0:
        return
    acc_tl, acc_torch = _acc(out.dtype)
    with _on_device(out):
        sorted_ids, perm = torch.sort(sort_keys(ids, num_rows), stable=True)
        num_chunks = triton.cdiv(num_lookups, SEGMENT_CHUNK)
        carry_first = torch.empty((num_chunks, dim), dtype=acc_torch, device=device)
        carry_last = torch.empty((num_chunks, dim), dtype=acc_torch, device=device)
        lr_t = lr if lr is not None else carry_first  # unused pointers still need a tensor
        state_t = state if state is not None else carry_first
        # one program reduces one row vector at a time: a warp per 128 columns is plenty
        common = dict(
            num_warps=max(1, min(4, _pow2(dim) // 128)),
            OPTIMIZER=OPTIMIZERS[optimizer], STOCHASTIC=bool(stochastic_rounding),
            CHUNK=SEGMENT_CHUNK, K_PAD=_pow2(dim, 16), L_PAD=_l_pad(num_blocks), BY_MAP=by_map,
            ACC=acc_tl,
        )  # fmt: skip
        _segment_rows_kernel[(num_chunks,)](
            sorted_ids, perm, dout, dout_index if dout_index is not None else perm,
            counts if counts is not None else carry_first,
            values if values is not None else dout, alpha, blocks, out, state_t, lr_t,
            carry_first, carry_last,
            num_lookups, num_rows, dout.shape[0], dim, num_blocks, dout.stride(0),
            alpha.stride(0), out.stride(0), float(optimizer_eps), int(seed),
            HAS_VALUES=values is not None, DOUT_INDEX=dout_index is not None,
            DOUT_COUNTS=counts is not None, **common,
        )  # fmt: skip
        # a (TILE, K_PAD) tile of carries per step, at most 2048 values per program
        tile = max(1, min(CARRY_TILE, 2048 // common["K_PAD"]))
        _segment_carry_kernel[(num_chunks,)](
            sorted_ids, alpha, blocks, out, state_t, lr_t, carry_first, carry_last,
            num_lookups, num_rows, dim, num_blocks, alpha.stride(0), out.stride(0),
            float(optimizer_eps), int(seed), TILE=tile, **common,
        )  # fmt: skip
