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
* The backward's α and weights steps are the lookup op's kernels
  (``mixemb.kernels.soft_select.alpha_step`` and
  ``mixemb.kernels.soft_select_weights.weights_step``) with their dout-row index on:
  lookup i's output gradient is the row bag_of[i] of dout (B, K), divided by its bag's
  count for mean.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mixemb.kernels.soft_select import (
    _acc,
    _block_of,
    _blocks,
    _l_pad,
    _on_device,
    _tile,
    alpha_step,
    check_dout,
    check_inputs,
)
from mixemb.kernels.soft_select_weights import weights_step

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

    weight: (N, K) float32/float16/bfloat16/float64, unit column stride (any row stride).
    alpha: (L, K), L ≤ 64.
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
    check_dout(dout, offsets.numel() - 1, dim, device)


def soft_select_bag_bwd_alpha(
    dout, weight, alpha, boundaries, ids, offsets, per_sample_weights=None, *, mode="sum",
    padding_idx=-1, need_alpha=True, need_values=False, normalize=True, l1=0.0, eps=1e-8,
    block_map=None, index=None,
):  # fmt: skip
    """The α step's backward of the bag: (dalpha (L, K) in alpha's dtype or None, dpsw (M,)
    in per_sample_weights' dtype (weight's without them) or None).

    dout: (B, K), unit column stride (any row stride).
    dalpha = normalize?(Σ_block weight[id] ⊙ g_i + l1·sign(α)) with
    g_i = dout[bag_i] (/ count) (· psw_i), the lookup op's normalization;
    dpsw_i = Σ_k weight[id] ⊙ alpha[block] ⊙ dout[bag_i] (0 for a lookup left out).
    index: ``soft_select_bag_index``'s result when the caller has it (else computed).
    """
    psw = per_sample_weights
    check_bag_inputs(weight, alpha, boundaries, ids, offsets, psw, mode, block_map)
    _check_bag_dout(dout, offsets, alpha.shape[1], weight.device)
    bag_of, counts = _index(index, weight, ids, offsets, mode, padding_idx)
    return alpha_step(
        dout, weight, alpha, boundaries, block_map, ids, psw, need_alpha=need_alpha,
        need_values=need_values, normalize=normalize, l1=l1, eps=eps, dout_index=bag_of,
        counts=counts,
    )  # fmt: skip


def soft_select_bag_bwd_weight(
    dout, weight, alpha, boundaries, ids, offsets, per_sample_weights=None, *, mode="sum",
    padding_idx=-1, block_map=None, index=None,
):  # fmt: skip
    """The weights step's backward of the bag: dense dweight (N, K) in weight's dtype, each
    row α[block] ⊙ Σ_{lookups of the id} dout[bag_i] (/ count) (· psw_i); a padding row
    gets zeros. Deterministic: ids sorted once, runs reduced as the lookup op's weights
    step (bitwise reproducible). dout: (B, K), unit column stride (any row stride); index
    as in the α step.
    """
    psw = per_sample_weights
    check_bag_inputs(weight, alpha, boundaries, ids, offsets, psw, mode, block_map)
    _check_bag_dout(dout, offsets, weight.shape[1], weight.device)
    out = torch.zeros(weight.shape, dtype=weight.dtype, device=weight.device)
    if ids.numel() == 0 or offsets.numel() == 1:
        return out
    bag_of, counts = _index(index, weight, ids, offsets, mode, padding_idx)
    weights_step(
        dout, out, alpha, boundaries, block_map, ids, psw, dout_index=bag_of, counts=counts
    )
    return out
