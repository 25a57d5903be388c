"""``soft_select_bag``: the DNIS lookup × α pooled per bag, in one op (sum or mean).

(The module is not named after the op: ``mixemb.ops.soft_select_bag`` is the op itself.)

out[b] = pool_{i in bag b} weight[id_i] ⊙ alpha[block(id_i)] (· psw_i)

Bags are given as offsets (B+1,): bag b holds lookups [offsets[b], offsets[b+1]); ids of
``padding_idx`` are left out of their bag and of mean's count; an empty bag is zeros.
The backward is the lookup op's (``mixemb.ops.soft_select``) seen through the pooling:
lookup i's output gradient is dout[bag_i] (/ count for mean) (· psw_i), so α's gradient is
summed over every lookup of a block, the L1 term added, and then normalized per block
row, exactly as ``soft_select_lookup`` does; the table gets a dense gradient and the
per-sample weights theirs. Mode "max" is not fused: ``SearchableEmbeddingBag`` runs it as
``soft_select_lookup`` then pooling.

Where the math runs is ``mixemb.ops.soft_select``'s one decision (``implementation``):
the Triton kernels of ``mixemb.kernels.soft_select_bag`` (CUDA, or CPU under Triton's
interpreter), whose backward reads the per-lookup gradient through a (M,) bag index
instead of materializing it, and which read the table and dout through their row strides
(a column slice of a wider table, or of a concatenation's gradient, is not copied; only a
column-strided one is); or on CPU the pure-PyTorch math: the forward is
``soft_select_bag_reference`` and the backward materializes the (M, K) per-lookup
gradient and runs ``mixemb.reference``'s hand-written lookup backward on it.

Entry points, as for the lookup op: registered ops ``torch.ops.mixemb.soft_select_bag``
and ``soft_select_bag_backward`` (fake kernels, autograd: what torch.compile traces and
``opcheck`` checks), and ``_SoftSelectBag``, the eager autograd.Function that calls the
launchers or the reference math without the dispatcher.

``mixemb.reference.soft_select_bag_reference`` is the op's oracle (lookup, then
``F.embedding_bag``) and ``soft_select_bag_bytes`` its ideal bytes.
"""

from __future__ import annotations

import torch

from mixemb import reference as ref
from mixemb.ops.soft_select import (
    BACKENDS,
    as_rows,
    check_lookup_inputs,
    check_lookups,
    implementation,
    kernels_run_on,
)
from mixemb.reference import soft_select_bag_reference

Tensor = torch.Tensor
MODES = ("sum", "mean")


def bag_of_lookups(ids: Tensor, offsets: Tensor, padding_idx: int | None = None) -> Tensor:
    """(M,) int64 bag of each lookup of ids (M,) under offsets (B+1,) int; B for a lookup
    outside every bag or with id ``padding_idx``. No host syncs."""
    num_bags = offsets.numel() - 1
    bags = torch.searchsorted(offsets.long(), torch.arange(ids.numel(), device=ids.device),
                              right=True) - 1  # fmt: skip
    dropped = (bags < 0) | (bags >= num_bags)
    if padding_idx is not None and padding_idx >= 0:
        dropped |= ids == padding_idx
    return bags.masked_fill(dropped, num_bags)


# -------------------------------------------------------------- forward and backward math


def _bag_kernels(t: Tensor):
    """mixemb.kernels.soft_select_bag where the Triton kernels run on t's device, else None."""
    if not kernels_run_on(t):
        return None
    from mixemb.kernels import soft_select_bag

    return soft_select_bag


def _pad(padding_idx: int) -> int | None:
    return None if padding_idx < 0 else padding_idx


def _forward(weight, alpha, boundaries, block_map, ids, offsets, psw, mode, padding_idx, impl):
    """(B, K) in promote_types(weight, alpha); padding_idx -1 for none."""
    kernels = _bag_kernels(ids) if impl == "triton" else None
    if kernels is not None:
        return kernels.soft_select_bag_fwd(
            as_rows(weight), alpha, boundaries, ids.contiguous(), offsets.contiguous(),
            None if psw is None else psw.contiguous(), mode=mode, padding_idx=padding_idx,
            block_map=block_map,
        )  # fmt: skip
    return soft_select_bag_reference(
        weight, alpha, boundaries, ids, offsets, psw, mode=mode, padding_idx=_pad(padding_idx),
        block_map=block_map,
    )  # fmt: skip


def _lookup_grads(dout: Tensor, bags: Tensor, mode: str) -> Tensor:
    """(M, K) output gradient of every lookup: dout[bag] (/ its bag's count), zero rows for
    lookups in no bag (bags == B)."""
    num_bags = dout.shape[0]
    ext = torch.cat([dout, dout.new_zeros(1, dout.shape[1])])
    if mode == "mean":
        counts = dout.new_zeros(num_bags + 1).index_add_(0, bags, dout.new_ones(bags.shape))
        ext = ext / counts.clamp(min=1).unsqueeze(1)
    return ext.index_select(0, bags)


def _backward_math(dout, saved, needs, cfg, impl):
    """(dweight (N, K), dalpha (L, K), dpsw (M,)), each None where not needed."""
    weight, alpha, boundaries, block_map, ids, offsets, psw = saved
    need_w, need_a, need_v = needs
    mode, padding_idx, normalize, l1, eps = cfg
    kernels = _bag_kernels(ids) if impl == "triton" else None
    dweight = dalpha = dpsw = None
    if kernels is not None:
        dout = as_rows(dout)
        w, flat, offs = as_rows(weight), ids.contiguous(), offsets.contiguous()
        v = None if psw is None else psw.contiguous()
        index = kernels.soft_select_bag_index(w, flat, offs, mode=mode, padding_idx=padding_idx)
        kw = dict(mode=mode, padding_idx=padding_idx, block_map=block_map, index=index)
        if need_a or need_v:
            dalpha, dpsw = kernels.soft_select_bag_bwd_alpha(
                dout, w, alpha, boundaries, flat, offs, v, need_alpha=need_a,
                need_values=need_v, normalize=normalize, l1=l1, eps=eps, **kw,
            )  # fmt: skip
        if need_w:
            dweight = kernels.soft_select_bag_bwd_weight(dout, w, alpha, boundaries, flat,
                                                         offs, v, **kw)  # fmt: skip
        return dweight, dalpha, dpsw
    flat = ids.long()
    d = _lookup_grads(dout, bag_of_lookups(flat, offsets, _pad(padding_idx)), mode)
    if need_a or need_v:
        dalpha, dpsw = ref.reference_alpha_values_grad(
            d, weight, alpha, boundaries, flat, psw, need_a, need_v, normalize, l1, eps,
            block_map=block_map,
        )  # fmt: skip
    if need_w:
        dweight = ref.reference_weight_grad(d, weight, alpha, boundaries, flat, psw, None,
                                            block_map)  # fmt: skip
    return dweight, dalpha, dpsw


class _SoftSelectBag(torch.autograd.Function):
    """The eager path: ``_forward`` and ``_backward_math`` on the implementation chosen by
    ``mixemb.ops.soft_select.implementation`` ("reference" or "triton")."""

    @staticmethod
    def forward(ctx, weight, alpha, boundaries, block_map, ids, offsets, psw, mode,
                padding_idx, normalize, l1, eps, impl):  # fmt: skip
        out = _forward(weight, alpha, boundaries, block_map, ids, offsets, psw, mode,
                       padding_idx, impl)  # fmt: skip
        ctx.save_for_backward(weight, alpha, boundaries, block_map, ids, offsets, psw)
        ctx.cfg = (mode, padding_idx, normalize, l1, eps)
        ctx.impl = impl
        return out

    @staticmethod
    def backward(ctx, dout):
        needs = tuple(ctx.needs_input_grad[i] for i in (0, 1, 6))
        dw, da, dv = _backward_math(dout, ctx.saved_tensors, needs, ctx.cfg, ctx.impl)
        return (dw, da, None, None, None, None, dv) + (None,) * 6


# ------------------------------------------------------------------------ registered ops
# padding_idx is -1 for none in the registered ops (ids are never negative).


@torch.library.custom_op("mixemb::soft_select_bag", mutates_args=())
def soft_select_bag_forward(
    weight: Tensor,
    alpha: Tensor,
    boundaries: Tensor | None,
    ids: Tensor,
    offsets: Tensor,
    per_sample_weights: Tensor | None,
    mode: str,
    padding_idx: int,
    normalize: bool,
    l1: float,
    eps: float,
    block_map: Tensor | None = None,
) -> Tensor:
    """(B, K) pooled weight[ids] ⊙ alpha[block(ids)] (· psw); see soft_select_bag."""
    return _forward(weight, alpha, boundaries, block_map, ids, offsets, per_sample_weights,
                    mode, padding_idx, "triton")  # fmt: skip


@soft_select_bag_forward.register_fake
def _(weight, alpha, boundaries, ids, offsets, per_sample_weights, mode, padding_idx,
      normalize, l1, eps, block_map=None):  # fmt: skip
    dtype = torch.promote_types(weight.dtype, alpha.dtype)
    return weight.new_empty((offsets.shape[0] - 1, weight.shape[1]), dtype=dtype)


@torch.library.custom_op("mixemb::soft_select_bag_backward", mutates_args=())
def soft_select_bag_backward(
    dout: Tensor,
    weight: Tensor,
    alpha: Tensor,
    boundaries: Tensor | None,
    ids: Tensor,
    offsets: Tensor,
    per_sample_weights: Tensor | None,
    mode: str,
    padding_idx: int,
    need_weight: bool,
    need_alpha: bool,
    need_values: bool,
    normalize: bool,
    l1: float,
    eps: float,
    block_map: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """(dweight (N, K), dalpha (L, K), dpsw (M,)): each an empty (0,) tensor where its
    need_* is False. dalpha is normalized per block row when asked (L1 term inside)."""
    saved = (weight, alpha, boundaries, block_map, ids, offsets, per_sample_weights)
    needs = (need_weight, need_alpha, need_values)
    grads = _backward_math(dout, saved, needs, (mode, padding_idx, normalize, l1, eps),
                           "triton")  # fmt: skip
    return tuple(weight.new_empty((0,)) if g is None else g for g in grads)


@soft_select_bag_backward.register_fake
def _(dout, weight, alpha, boundaries, ids, offsets, per_sample_weights, mode, padding_idx,
      need_weight, need_alpha, need_values, normalize, l1, eps, block_map=None):  # fmt: skip
    return (
        weight.new_empty(weight.shape if need_weight else (0,)),
        alpha.new_empty(alpha.shape) if need_alpha else weight.new_empty((0,)),
        per_sample_weights.new_empty(ids.shape) if need_values else weight.new_empty((0,)),
    )


def _setup_context(ctx, inputs, output):
    weight, alpha, boundaries, ids, offsets, psw, mode, padding_idx, normalize, l1, eps = inputs[
        :11
    ]
    block_map = inputs[11] if len(inputs) > 11 else None
    ctx.save_for_backward(weight, alpha, boundaries, block_map, ids, offsets, psw)
    ctx.cfg = (mode, padding_idx, normalize, l1, eps)


def _registered_backward(ctx, dout):
    need_w, need_a, _, _, _, need_v = ctx.needs_input_grad[:6]
    weight, alpha, boundaries, block_map, ids, offsets, psw = ctx.saved_tensors
    mode, padding_idx, normalize, l1, eps = ctx.cfg
    dw, da, dv = soft_select_bag_backward(
        dout, weight, alpha, boundaries, ids, offsets, psw, mode, padding_idx,
        need_w, need_a, need_v, normalize, l1, eps, block_map,
    )  # fmt: skip
    keep = (need_w, need_a, need_v)
    dw, da, dv = (g if k else None for g, k in zip((dw, da, dv), keep))
    return (dw, da, None, None, None, dv) + (None,) * 6


soft_select_bag_forward.register_autograd(_registered_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------- public op


def soft_select_bag(
    weight: Tensor,
    alpha: Tensor,
    boundaries: Tensor | None,
    ids: Tensor,
    offsets: Tensor,
    per_sample_weights: Tensor | None = None,
    *,
    block_map: Tensor | None = None,
    mode: str = "sum",
    padding_idx: int | None = None,
    normalize: bool = True,
    l1: float = 0.0,
    eps: float = 1e-8,
    backend: str = "auto",
    check_ids: bool | None = None,
) -> Tensor:
    """Pool looked-up rows, each scaled by its block's soft selection row, per bag.

    weight: (N, K) float32/float16/bfloat16/float64 table; alpha: (L, K).
    boundaries: (L+1,) int64, or None with block_map (N,) int64 in [0, L).
    ids: (M,) int32/int64 in [0, N).
    offsets: (B+1,) int32/int64, offsets[0] = 0, non-decreasing, offsets[B] ≤ M: bag b
        holds lookups [offsets[b], offsets[b+1]); lookups past offsets[B] are in no bag
        (nn.EmbeddingBag's include_last_offset=True form; prepare the other by appending M).
    per_sample_weights: (M,) float multipliers, mode "sum" only, or None.
    mode: "sum" or "mean" (over the lookups a bag keeps; an empty bag is zeros).
    padding_idx: an id in [-N, N) left out of its bag, of mean's count and of every
        gradient, or None.
    normalize, l1, eps, backend, check_ids: as ``soft_select_lookup``'s (α's gradient
        summed over the lookups of a block, L1 term added, then normalized per row).
    Returns (B, K) in torch.promote_types(weight.dtype, alpha.dtype).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES} (max: soft_select_lookup, then pool), "
                         f"got {mode!r}")  # fmt: skip
    if ids.dim() != 1:
        raise ValueError(f"ids must be 1-D (M,), got shape {tuple(ids.shape)}")
    check_lookup_inputs(weight, alpha, boundaries, block_map, ids, per_sample_weights)
    if per_sample_weights is not None and mode != "sum":
        raise ValueError(f"per_sample_weights need mode 'sum', got {mode!r}")
    n = weight.shape[0]
    if padding_idx is not None and not -n <= padding_idx < n:
        raise ValueError(f"padding_idx must be in [-{n}, {n}), got {padding_idx}")
    pad = -1 if padding_idx is None else padding_idx % n
    check_offsets(offsets, ids.numel())
    if check_ids if check_ids is not None else not ids.is_cuda:
        check_lookups(ids, n, block_map, alpha.shape[0])
    offsets, l1, eps = offsets.to(torch.int64), float(l1), float(eps)
    impl = implementation(weight, backend, torch.compiler.is_compiling())
    if impl == "ops":
        return soft_select_bag_forward(weight, alpha, boundaries, ids, offsets,
                                       per_sample_weights, mode, pad, normalize, l1, eps,
                                       block_map)  # fmt: skip
    return _SoftSelectBag.apply(
        weight, alpha, boundaries, block_map, ids, offsets, per_sample_weights, mode, pad,
        normalize, l1, eps, impl,
    )  # fmt: skip


def check_offsets(offsets: Tensor, num_lookups: int) -> None:
    """ValueError unless offsets is (B+1,) int from 0, non-decreasing, ending ≤ M (the
    values are read only for CPU tensors outside torch.compile: a host sync on a GPU)."""
    if offsets.dim() != 1 or offsets.numel() < 1 or offsets.is_floating_point():
        raise ValueError(
            f"offsets must be (B+1,) int32/int64, got {tuple(offsets.shape)} {offsets.dtype}"
        )
    if offsets.is_cuda or torch.compiler.is_compiling():
        return
    if int(offsets[0]) != 0:
        raise ValueError(f"offsets[0] must be 0, got {int(offsets[0])}")
    if offsets.numel() > 1 and bool((offsets[1:] < offsets[:-1]).any()):
        raise ValueError(f"offsets must be non-decreasing, got {offsets.tolist()[:8]}")
    if int(offsets[-1]) > num_lookups:
        raise ValueError(f"offsets[-1] = {int(offsets[-1])} is past the {num_lookups} ids")
