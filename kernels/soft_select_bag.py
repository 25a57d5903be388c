"""Triton kernels of the pooled DNIS lookup × α (the bag op) and their launchers.

Notation as in ``mixemb.kernels.soft_select`` (table E (N, K), α (L, K), the block of an
id from boundaries (L+1,) or a block_map (N,)), plus M lookups ids (M,) pooled into B bags
by offsets (B+1,) int64: bag b holds the lookups [offsets[b], offsets[b+1]) (lookups at or
past offsets[B] are in no bag). A lookup whose id is ``padding_idx`` (or outside [0, N))
is left out of its bag and of mean's count::

    out[b] = pool_{i in bag b} E[id_i] ⊙ α[block(id_i)] (· psw_i)      pool: sum | mean

Kernels (fp32 accumulation, fp64 for fp64 tables; deterministic, no atomics, no host
syncs):

* ``_bag_fwd_kernel`` — one program per (bag, K tile) walks its bag in chunks of
  ``BAG_CHUNK`` lookups. A very long bag is one program's serial loop: bags are pooled
  rows of a recommender (tens of ids), not whole tables.
* ``_bag_index_kernel`` — the backward's per-lookup view of the bags: bag_of (M,) int32
  (B for a lookup outside every bag or left out) and, for mean, counts (B,). Every
  per-lookup output gradient is then dout[bag_of[i]] (/ counts[bag]) (· psw_i): the
  backward kernels read it through that index instead of materializing an (M, K) dout.
* ``_bag_alpha_grad_partial_kernel`` — the α step's per-program (L, K) partials (one-hot
  matmul, as the lookup op's) and dpsw; finished by the lookup op's
  ``_alpha_grad_finish_kernel`` (L1 term, then the per-row normalization).
* ``_bag_segment_rows_kernel`` — the weights step over ids sorted once, the lookup op's
  run reduction with the bag indirection; runs crossing chunk edges are finished by the
  lookup op's ``_segment_carry_kernel``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mixemb.kernels import soft_select as _ss
from mixemb.kernels.soft_select import (
    _acc,
    _alpha_grad_finish_kernel,
    _and,
    _block_of,
    _blocks,
    _finish_row,
    _l_pad,
    _num_programs_cap,
    _on_device,
    _pow2,
    _segment_carry_kernel,
    _tile,
    check_inputs,
)

#: lookups of one bag read per step of the forward and index kernels
BAG_CHUNK = 32
MODES = ("sum", "mean")


@triton.jit
def _bag_ids(ids_ptr, pos, end, num_rows, padding_idx):
    """(ids int64, kept): the ids at positions pos < end, kept unless padding or outside
    [0, num_rows) (a bad id reads nothing and counts nothing)."""
    live = pos < end
    ids = tl.load(ids_ptr + pos, mask=live, other=0).to(tl.int64)
    return ids, live & (ids >= 0) & (ids < num_rows) & (ids != padding_idx)


@triton.jit
def _bag_fwd_kernel(
    weight_ptr,
    alpha_ptr,
    bounds_ptr,
    ids_ptr,
    offsets_ptr,
    psw_ptr,
    out_ptr,
    num_lookups,
    num_rows,
    dim,
    num_blocks,
    padding_idx,
    stride_w,
    stride_alpha,
    HAS_PSW: tl.constexpr,
    MEAN: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    L_PAD: tl.constexpr,
    BY_MAP: tl.constexpr,
    ACC: tl.constexpr,
):
    bag = tl.program_id(0).to(tl.int64)
    pid_k = tl.program_id(1).to(tl.int64)
    cols = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    cmask = cols < dim
    start = tl.load(offsets_ptr + bag)
    end = tl.minimum(tl.load(offsets_ptr + bag + 1), num_lookups)
    acc = tl.zeros([BLOCK_M, BLOCK_K], dtype=ACC)
    count = tl.zeros([BLOCK_M], dtype=tl.int32)
    for s in range(start, end, BLOCK_M):
        pos = s + tl.arange(0, BLOCK_M)
        ids, kept = _bag_ids(ids_ptr, pos, end, num_rows, padding_idx)
        blocks = _block_of(ids, kept, bounds_ptr, num_blocks, L_PAD, BY_MAP)
        mask = kept[:, None] & cmask[None, :]
        e = tl.load(weight_ptr + ids[:, None] * stride_w + cols[None, :], mask=mask, other=0.0)
        a = tl.load(
            alpha_ptr + blocks[:, None] * stride_alpha + cols[None, :], mask=mask, other=0.0
        )
        rows = e.to(ACC) * a.to(ACC)
        if HAS_PSW:
            rows = rows * tl.load(psw_ptr + pos, mask=kept, other=0.0).to(ACC)[:, None]
        acc += rows
        count += kept.to(tl.int32)
    out = tl.sum(acc, axis=0)
    if MEAN:
        out = out / tl.maximum(tl.sum(count, axis=0), 1).to(ACC)
    tl.store(out_ptr + bag * dim + cols, out.to(out_ptr.dtype.element_ty), mask=cmask)


@triton.jit
def _bag_index_kernel(
    ids_ptr,
    offsets_ptr,
    bag_of_ptr,
    counts_ptr,
    num_lookups,
    num_rows,
    num_bags,
    padding_idx,
    MEAN: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    bag = tl.program_id(0).to(tl.int64)
    start = tl.load(offsets_ptr + bag)
    end = tl.minimum(tl.load(offsets_ptr + bag + 1), num_lookups)
    count = tl.zeros([BLOCK_M], dtype=tl.int32)
    for s in range(start, end, BLOCK_M):
        pos = s + tl.arange(0, BLOCK_M)
        _, kept = _bag_ids(ids_ptr, pos, end, num_rows, padding_idx)
        this = tl.zeros([BLOCK_M], tl.int64) + bag
        tl.store(bag_of_ptr + pos, tl.where(kept, this, num_bags).to(tl.int32), mask=pos < end)
        count += kept.to(tl.int32)
    if MEAN:
        c = tl.maximum(tl.sum(count, axis=0), 1)
        tl.store(counts_ptr + bag, c.to(counts_ptr.dtype.element_ty))


@triton.jit
def _bag_alpha_grad_partial_kernel(
    weight_ptr,
    alpha_ptr,
    bounds_ptr,
    ids_ptr,
    bag_of_ptr,
    counts_ptr,
    psw_ptr,
    dout_ptr,
    partial_ptr,
    dpsw_ptr,
    num_lookups,
    num_bags,
    dim,
    num_blocks,
    stride_w,
    stride_alpha,
    tiles_per_program,
    HAS_PSW: tl.constexpr,
    MEAN: tl.constexpr,
    NEED_ALPHA: tl.constexpr,
    NEED_VALUES: tl.constexpr,
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
    for t in range(tiles_per_program):
        lookups = (pid * tiles_per_program + t) * BLOCK_B + tl.arange(0, BLOCK_B)
        live = lookups < num_lookups
        bags = tl.load(bag_of_ptr + lookups, mask=live, other=num_bags).to(tl.int64)
        kept = bags < num_bags  # the index kernel put padding and bad ids in no bag
        ids = tl.load(ids_ptr + lookups, mask=kept, other=0).to(tl.int64)
        blocks = _block_of(ids, kept, bounds_ptr, num_blocks, L_PAD, BY_MAP)
        mask = kept[:, None] & cmask[None, :]
        e = tl.load(weight_ptr + ids[:, None] * stride_w + cols[None, :], mask=mask, other=0.0)
        d = tl.load(dout_ptr + bags[:, None] * dim + cols[None, :], mask=mask, other=0.0)
        d = d.to(ACC)
        if MEAN:
            d = d / tl.load(counts_ptr + bags, mask=kept, other=1.0).to(ACC)[:, None]
        prod = e.to(ACC) * d
        if NEED_VALUES:
            a = tl.load(
                alpha_ptr + blocks[:, None] * stride_alpha + cols[None, :], mask=mask, other=0.0
            )
            dv = tl.sum(prod * a.to(ACC), axis=1)
            tl.store(dpsw_ptr + pid_k * num_lookups + lookups, dv, mask=live)
        if NEED_ALPHA:
            if HAS_PSW:
                prod = prod * tl.load(psw_ptr + lookups, mask=kept, other=0.0).to(ACC)[:, None]
            onehot = ((blocks[:, None] == block_ids[None, :]) & kept[:, None]).to(ACC)
            acc += tl.dot(tl.trans(onehot), prod, input_precision="ieee")
    if NEED_ALPHA:
        out = partial_ptr + pid * num_blocks * dim + block_ids[:, None] * dim + cols[None, :]
        tl.store(out, acc, mask=(block_ids < num_blocks)[:, None] & cmask[None, :])


@triton.jit
def _bag_segment_rows_kernel(
    sorted_ids_ptr,
    perm_ptr,
    bag_of_ptr,
    counts_ptr,
    psw_ptr,
    dout_ptr,
    alpha_ptr,
    bounds_ptr,
    out_ptr,
    carry_first_ptr,
    carry_last_ptr,
    num_lookups,
    num_bags,
    num_rows,
    dim,
    num_blocks,
    stride_alpha,
    HAS_PSW: tl.constexpr,
    MEAN: tl.constexpr,
    CHUNK: tl.constexpr,
    K_PAD: tl.constexpr,
    L_PAD: tl.constexpr,
    BY_MAP: tl.constexpr,
    ACC: tl.constexpr,
):
    # the lookup op's _segment_rows_kernel with each lookup's gradient read through its
    # bag: the same carries, so its _segment_carry_kernel finishes the crossing runs
    chunk = tl.program_id(0).to(tl.int64)
    start = chunk * CHUNK
    cols = tl.arange(0, K_PAD)
    cmask = cols < dim
    prev_id = tl.load(sorted_ids_ptr + start - 1, mask=start > 0, other=-1)
    cont_prev = tl.load(sorted_ids_ptr + start) == prev_id
    acc = tl.zeros([K_PAD], dtype=ACC)
    for i in range(CHUNK):
        pos = start + i
        live = pos < num_lookups
        row_id = tl.load(sorted_ids_ptr + pos, mask=live, other=-1)
        src = tl.load(perm_ptr + pos, mask=live, other=0)
        bag = tl.load(bag_of_ptr + src, mask=live, other=num_bags).to(tl.int64)
        kept = live & (bag < num_bags)
        d = tl.load(dout_ptr + bag * dim + cols, mask=_and(cmask, kept), other=0.0).to(ACC)
        if MEAN:
            d = d / tl.load(counts_ptr + bag, mask=kept, other=1.0).to(ACC)
        if HAS_PSW:
            d = d * tl.load(psw_ptr + src, mask=kept, other=0.0).to(ACC)
        acc += d
        has_next = pos + 1 < num_lookups
        next_id = tl.load(sorted_ids_ptr + pos + 1, mask=has_next, other=-1)
        run_ends = live & ((~has_next) | (next_id != row_id) | (i == CHUNK - 1))
        cont_next = has_next & (next_id == row_id)
        ends_here = run_ends & (~cont_prev)
        tl.store(carry_first_ptr + chunk * dim + cols, acc, mask=_and(cmask, run_ends & cont_prev))
        tl.store(carry_last_ptr + chunk * dim + cols, acc, mask=_and(cmask, ends_here & cont_next))
        done = ends_here & (~cont_next) & (row_id >= 0) & (row_id < num_rows)
        _finish_row(
            row_id, acc, cols, cmask, dim, done, alpha_ptr, bounds_ptr, num_blocks,
            stride_alpha, out_ptr, dim, out_ptr, out_ptr, 0.0, 0, L_PAD, BY_MAP, ACC,
        )  # fmt: skip
        acc = tl.where(run_ends, 0.0, acc)
        cont_prev = cont_prev & (~run_ends)


# ----------------------------------------------------------------------------- launchers


def check_bag_inputs(weight, alpha, boundaries, ids, offsets, psw, mode, block_map) -> None:
    """The lookup launchers' checks plus the bag's: ids (M,), offsets (B+1,) int64, mode."""
    check_inputs(weight, alpha, boundaries, ids, psw, block_map)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if ids.dim() != 1:
        raise ValueError(f"ids must be 1-D (M,), got {tuple(ids.shape)}")
    if (
        offsets.dtype != torch.int64
        or offsets.dim() != 1
        or offsets.numel() < 1
        or not offsets.is_contiguous()
        or offsets.device != weight.device
    ):
        raise ValueError(
            f"offsets must be contiguous int64 (B+1,) on {weight.device}, got "
            f"{tuple(offsets.shape)} {offsets.dtype} on {offsets.device}"
        )
    if psw is not None and mode != "sum":
        raise ValueError(f"per_sample_weights need mode 'sum', got {mode!r}")


def soft_select_bag_fwd(
    weight, alpha, boundaries, ids, offsets, per_sample_weights=None, *, mode="sum",
    padding_idx=-1, block_map=None, out_dtype=None,
):  # fmt: skip
    """out (B, K) = pool_{i in bag b} weight[id_i] ⊙ alpha[block(id_i)] (· psw_i).

    weight: (N, K) float32/float16/bfloat16/float64, contiguous. alpha: (L, K), L ≤ 64.
    boundaries: (L+1,) int64, or None with block_map (N,) int64 in [0, L).
    ids: (M,) int32/int64. offsets: (B+1,) int64, offsets[0] = 0, non-decreasing.
    per_sample_weights: (M,) float or None (mode "sum" only). mode: "sum" or "mean" (over
    the lookups a bag keeps; an empty bag is zeros). padding_idx: the id left out of its
    bag, -1 for none. out_dtype: default torch.promote_types(weight.dtype, alpha.dtype).
    """
    check_bag_inputs(weight, alpha, boundaries, ids, offsets, per_sample_weights, mode,
                     block_map)  # fmt: skip
    num_bags, dim = offsets.numel() - 1, weight.shape[1]
    out_dtype = out_dtype or torch.promote_types(weight.dtype, alpha.dtype)
    out = torch.empty((num_bags, dim), dtype=out_dtype, device=weight.device)
    if num_bags == 0:
        return out
    block_k = _tile(dim)[1]
    blocks, by_map = _blocks(boundaries, block_map)
    psw = per_sample_weights
    with _on_device(weight):
        _bag_fwd_kernel[(num_bags, triton.cdiv(dim, block_k))](
            weight, alpha, blocks, ids, offsets, psw if psw is not None else weight, out,
            ids.numel(), weight.shape[0], dim, alpha.shape[0], int(padding_idx),
            weight.stride(0), alpha.stride(0),
            HAS_PSW=psw is not None, MEAN=mode == "mean", BLOCK_M=BAG_CHUNK, BLOCK_K=block_k,
            L_PAD=_l_pad(alpha.shape[0]), BY_MAP=by_map, ACC=_acc(weight.dtype)[0],
        )  # fmt: skip
    return out


def soft_select_bag_index(weight, ids, offsets, *, mode="sum", padding_idx=-1):
    """(bag_of (M,) int32, counts (B,) or None): each lookup's bag (B for one in no bag,
    padding or outside [0, N)) and, for mean, each bag's count of kept lookups (at least
    1) in weight's accumulation dtype (fp32, fp64 for fp64). weight (N, K) gives N; ids
    (M,) and offsets (B+1,) int64 as for the forward."""
    num_bags, counts_dtype = offsets.numel() - 1, _acc(weight.dtype)[1]
    bag_of = torch.full((ids.numel(),), num_bags, dtype=torch.int32, device=ids.device)
    mean = mode == "mean"
    counts = torch.empty((num_bags if mean else 0,), dtype=counts_dtype, device=ids.device)
    if num_bags and ids.numel():
        with _on_device(ids):
            _bag_index_kernel[(num_bags,)](
                ids, offsets, bag_of, counts, ids.numel(), weight.shape[0], num_bags,
                int(padding_idx), MEAN=mean, BLOCK_M=BAG_CHUNK,
            )  # fmt: skip
    elif mean:
        counts.fill_(1)
    return bag_of, counts if mean else None


def _index(index, weight, ids, offsets, mode, padding_idx):
    if index is not None:
        return index
    return soft_select_bag_index(weight, ids, offsets, mode=mode, padding_idx=padding_idx)


def _check_bag_dout(dout, offsets, dim, device) -> None:
    if (
        dout.shape != (offsets.numel() - 1, dim)
        or not dout.is_contiguous()
        or dout.device != device
    ):
        raise ValueError(
            f"dout must be a contiguous ({offsets.numel() - 1}, {dim}) tensor on {device}, got "
            f"{tuple(dout.shape)} on {dout.device}"
        )


def soft_select_bag_bwd_alpha(
    dout, weight, alpha, boundaries, ids, offsets, per_sample_weights=None, *, mode="sum",
    padding_idx=-1, need_alpha=True, need_values=False, normalize=True, l1=0.0, eps=1e-8,
    block_map=None, index=None,
):  # fmt: skip
    """The α step's backward of the bag: (dalpha (L, K) in alpha's dtype or None, dpsw (M,)
    in per_sample_weights' dtype (weight's without them) or None).

    dout: (B, K) contiguous. dalpha = normalize?(Σ_block weight[id] ⊙ g_i + l1·sign(α))
    with g_i = dout[bag_i] (/ count) (· psw_i), the lookup op's normalization;
    dpsw_i = Σ_k weight[id] ⊙ alpha[block] ⊙ dout[bag_i] (0 for a lookup left out).
    index: ``soft_select_bag_index``'s result when the caller has it (else computed).
    """
    psw = per_sample_weights
    check_bag_inputs(weight, alpha, boundaries, ids, offsets, psw, mode, block_map)
    num_lookups, (num_blocks, dim), device = ids.numel(), alpha.shape, weight.device
    _check_bag_dout(dout, offsets, dim, device)
    bag_of, counts = _index(index, weight, ids, offsets, mode, padding_idx)
    blocks, by_map = _blocks(boundaries, block_map)
    block_b, block_k = _tile(dim)
    num_k_tiles = triton.cdiv(dim, block_k)
    tiles = triton.cdiv(num_lookups, block_b)
    programs = max(1, min(tiles, _num_programs_cap(device)))
    tiles_per_program = triton.cdiv(tiles, programs) if tiles else 0
    programs = triton.cdiv(tiles, tiles_per_program) if tiles else 1
    acc_tl, acc_torch = _acc(weight.dtype)
    alloc = torch.empty if num_lookups and need_alpha else torch.zeros
    partial = alloc((programs, num_blocks if need_alpha else 0, dim), dtype=acc_torch,
                    device=device)  # fmt: skip
    dv = torch.zeros((num_k_tiles, num_lookups if need_values else 0), dtype=acc_torch,
                     device=device)  # fmt: skip
    dalpha = dpsw = None
    with _on_device(weight):
        if num_lookups and (need_alpha or need_values):
            _bag_alpha_grad_partial_kernel[(programs, num_k_tiles)](
                weight, alpha, blocks, ids, bag_of, counts if counts is not None else dv,
                psw if psw is not None else weight, dout, partial, dv,
                num_lookups, offsets.numel() - 1, dim, num_blocks, weight.stride(0),
                alpha.stride(0), tiles_per_program,
                HAS_PSW=psw is not None, MEAN=mode == "mean", NEED_ALPHA=need_alpha,
                NEED_VALUES=need_values, BLOCK_B=block_b, BLOCK_K=block_k,
                L_PAD=_l_pad(num_blocks), BY_MAP=by_map, ACC=acc_tl,
            )  # fmt: skip
        if need_alpha:
            dalpha = torch.empty((num_blocks, dim), dtype=alpha.dtype, device=device)
            _alpha_grad_finish_kernel[(num_blocks,)](
                partial, alpha, dalpha, programs, num_blocks, dim, alpha.stride(0),
                float(l1), float(eps), NORMALIZE=normalize, K_PAD=_pow2(dim, 16), ACC=acc_tl,
            )  # fmt: skip
    if need_values:
        dv = dv[0] if num_k_tiles == 1 else dv.sum(0)
        dpsw = dv.to(psw.dtype if psw is not None else weight.dtype)
    return dalpha, dpsw


def soft_select_bag_bwd_weight(
    dout, weight, alpha, boundaries, ids, offsets, per_sample_weights=None, *, mode="sum",
    padding_idx=-1, block_map=None, index=None,
):  # fmt: skip
    """The weights step's backward of the bag: dense dweight (N, K) in weight's dtype, each
    row α[block] ⊙ Σ_{lookups of the id} dout[bag_i] (/ count) (· psw_i); a padding row
    gets zeros. Deterministic: ids sorted once, runs reduced as the lookup op's weights
    step (bitwise reproducible). dout: (B, K) contiguous; index as in the α step.
    """
    psw = per_sample_weights
    check_bag_inputs(weight, alpha, boundaries, ids, offsets, psw, mode, block_map)
    num_lookups, (num_rows, dim), num_blocks = ids.numel(), weight.shape, alpha.shape[0]
    device = weight.device
    _check_bag_dout(dout, offsets, dim, device)
    out = torch.zeros_like(weight)
    if num_lookups == 0 or offsets.numel() == 1:
        return out
    bag_of, counts = _index(index, weight, ids, offsets, mode, padding_idx)
    blocks, by_map = _blocks(boundaries, block_map)
    acc_tl, acc_torch = _acc(weight.dtype)
    chunk = _ss.SEGMENT_CHUNK  # read at call time: tests shrink it to cross chunk edges
    with _on_device(weight):
        sorted_ids, perm = torch.sort(ids.long(), stable=True)
        num_chunks = triton.cdiv(num_lookups, chunk)
        carry_first = torch.empty((num_chunks, dim), dtype=acc_torch, device=device)
        carry_last = torch.empty((num_chunks, dim), dtype=acc_torch, device=device)
        common = dict(
            num_warps=max(1, min(4, _pow2(dim) // 128)), CHUNK=chunk, K_PAD=_pow2(dim, 16),
            L_PAD=_l_pad(num_blocks), BY_MAP=by_map, ACC=acc_tl,
        )  # fmt: skip
        _bag_segment_rows_kernel[(num_chunks,)](
            sorted_ids, perm, bag_of, counts if counts is not None else carry_first,
            psw if psw is not None else carry_first, dout, alpha, blocks, out,
            carry_first, carry_last, num_lookups, offsets.numel() - 1, num_rows, dim,
            num_blocks, alpha.stride(0),
            HAS_PSW=psw is not None, MEAN=mode == "mean", **common,
        )  # fmt: skip
        tile = max(1, min(_ss.CARRY_TILE, 2048 // common["K_PAD"]))
        _segment_carry_kernel[(num_chunks,)](
            sorted_ids, alpha, blocks, out, carry_first, carry_first, carry_first, carry_last,
            num_lookups, num_rows, dim, num_blocks, alpha.stride(0), out.stride(0), 0.0,
            OPTIMIZER=0, TILE=tile, **common,
        )  # fmt: skip
    return out
