"""The DNIS lookup × α as registered PyTorch ops over the Triton kernels.

Ops (``torch.ops.mixemb.*``), each with a fake kernel so torch.compile and torch.export
trace them, and ``soft_select`` with its autograd:

* ``soft_select(weight, alpha, boundaries, ids, values, normalize, l1, eps, sparse,
  deterministic) -> (*ids.shape, K)``
* ``soft_select_backward_alpha(...) -> (dalpha (L, K), dvalues (*ids.shape) or (0,))``
* ``soft_select_backward_weight(...) -> dense (N, K), or per-lookup rows (B, K) if sparse``
* ``soft_select_fused_update_(...)`` — applies SGD / row-wise Adagrad to the looked-up
  rows of weight in place (mutates weight and the optimizer state).

Where the ops run: CUDA tensors → the Triton kernels of ``mixemb.kernels.soft_select``.
CPU tensors → the reference math of ``mixemb.ops.soft_select`` (no Triton needed at
run time), except when Triton's CPU interpreter is on (TRITON_INTERPRET=1 when
``mixemb.kernels`` was imported): then the kernels run in the interpreter — that is how
the tests check them on a machine without a GPU.
"""

from __future__ import annotations

import torch

from mixemb import reference as ref
from mixemb.ops.soft_select import (
    reference_alpha_values_grad,
    reference_forward,
    reference_row_grads,
    reference_weight_grad,
)

Tensor = torch.Tensor
kernels = None  # mixemb.kernels.soft_select, imported on first use (triton is heavy)


def _use_kernels(t: Tensor) -> bool:
    """True: run the Triton kernels (CUDA, or CPU under TRITON_INTERPRET=1)."""
    global kernels
    if kernels is None:
        try:
            from mixemb.kernels import soft_select as kernels
        except ImportError as e:  # triton is a dependency, but keep CPU use working
            if t.is_cuda:
                raise RuntimeError(f"backend='triton' needs the triton package: {e}") from e
            return False
    return t.is_cuda or kernels.INTERPRET


def _flat(ids: Tensor, values: Tensor | None, dout: Tensor | None = None, dim: int = 0):
    """ids (B,), values (B,) or None and dout (B, K) or None, flat and contiguous."""
    flat = ids.reshape(-1).contiguous()
    vals = None if values is None else values.reshape(-1).contiguous()
    d = None if dout is None else dout.reshape(-1, dim).contiguous()
    return flat, vals, d


# ------------------------------------------------------------------------------ forward


@torch.library.custom_op("mixemb::soft_select", mutates_args=())
def soft_select(
    weight: Tensor,
    alpha: Tensor,
    boundaries: Tensor,
    ids: Tensor,
    values: Tensor | None,
    normalize: bool,
    l1: float,
    eps: float,
    sparse: bool,
    deterministic: bool,
) -> Tensor:
    """(*ids.shape, K) = weight[ids] ⊙ alpha[block(ids)] (⊙ values); see soft_select_lookup."""
    flat, vals, _ = _flat(ids, values)
    if _use_kernels(weight):
        out = kernels.soft_select_fwd(weight.contiguous(), alpha, boundaries, flat, vals)
    else:
        out = reference_forward(weight, alpha, boundaries, flat.long(), vals)
    return out.reshape(*ids.shape, weight.shape[1])


@soft_select.register_fake
def _(weight, alpha, boundaries, ids, values, normalize, l1, eps, sparse, deterministic):
    dtype = torch.promote_types(weight.dtype, alpha.dtype)
    return weight.new_empty((*ids.shape, weight.shape[1]), dtype=dtype)


# ----------------------------------------------------------------------------- backward


@torch.library.custom_op("mixemb::soft_select_backward_alpha", mutates_args=())
def soft_select_backward_alpha(
    dout: Tensor,
    weight: Tensor,
    alpha: Tensor,
    boundaries: Tensor,
    ids: Tensor,
    values: Tensor | None,
    need_values: bool,
    normalize: bool,
    l1: float,
    eps: float,
) -> tuple[Tensor, Tensor]:
    """dalpha (L, K) in alpha's dtype (normalized per row if asked, L1 inside) and
    dvalues (*ids.shape) in values' dtype, or an empty (0,) tensor when not asked."""
    flat, vals, d = _flat(ids, values, dout, weight.shape[1])
    if _use_kernels(weight):
        dalpha, dvalues = kernels.soft_select_bwd_alpha(
            d, weight.contiguous(), alpha, boundaries, flat, vals,
            need_alpha=True, need_values=need_values, normalize=normalize, l1=l1, eps=eps,
        )  # fmt: skip
    else:
        dalpha, dvalues = reference_alpha_values_grad(
            d, weight, alpha, boundaries, flat.long(), vals, True, need_values, normalize, l1, eps
        )
    if dvalues is None:
        dvalues = weight.new_empty((0,))
    else:
        dvalues = dvalues.reshape(ids.shape)
    return dalpha, dvalues


@soft_select_backward_alpha.register_fake
def _(dout, weight, alpha, boundaries, ids, values, need_values, normalize, l1, eps):
    dvalues = values.new_empty(ids.shape) if need_values else weight.new_empty((0,))
    return alpha.new_empty(alpha.shape), dvalues


@torch.library.custom_op("mixemb::soft_select_backward_weight", mutates_args=())
def soft_select_backward_weight(
    dout: Tensor,
    weight: Tensor,
    alpha: Tensor,
    boundaries: Tensor,
    ids: Tensor,
    values: Tensor | None,
    sparse: bool,
    deterministic: bool,
) -> Tensor:
    """sparse=False: dense (N, K) gradient in weight's dtype; sparse=True: the (B, K)
    per-lookup rows of nn.Embedding(sparse=True)'s uncoalesced gradient."""
    flat, vals, d = _flat(ids, values, dout, weight.shape[1])
    if _use_kernels(weight):
        w = weight.contiguous()
        if sparse:
            return kernels.soft_select_bwd_rows(d, w, alpha, boundaries, flat, vals)
        return kernels.soft_select_bwd_weight(
            d, w, alpha, boundaries, flat, vals, deterministic=deterministic
        )
    if sparse:
        return reference_row_grads(d, weight, alpha, boundaries, flat.long(), vals)
    return reference_weight_grad(d, weight, alpha, boundaries, flat.long(), vals)


@soft_select_backward_weight.register_fake
def _(dout, weight, alpha, boundaries, ids, values, sparse, deterministic):
    if sparse:
        return weight.new_empty((ids.numel(), weight.shape[1]))
    return weight.new_empty(weight.shape)


def _setup_context(ctx, inputs, output):
    weight, alpha, boundaries, ids, values, normalize, l1, eps, sparse, deterministic = inputs
    ctx.save_for_backward(weight, alpha, boundaries, ids, values)
    ctx.cfg = (normalize, l1, eps, sparse, deterministic)


def _backward(ctx, dout):
    weight, alpha, boundaries, ids, values = ctx.saved_tensors
    normalize, l1, eps, sparse, deterministic = ctx.cfg
    need_w, need_a, _, _, need_v = ctx.needs_input_grad[:5]
    dweight = dalpha = dvalues = None
    if need_w:
        dweight = soft_select_backward_weight(
            dout, weight, alpha, boundaries, ids, values, sparse, deterministic
        )
        if sparse:
            # out-of-range ids (unchecked on the GPU) have zero rows; clamped, they stay a
            # valid sparse tensor instead of indexing past the table when accumulated
            idx = ids.reshape(1, -1).long().clamp(0, weight.shape[0] - 1)
            dweight = torch.sparse_coo_tensor(idx, dweight, weight.shape, check_invariants=False)
    if need_a or need_v:
        dalpha, dv = soft_select_backward_alpha(
            dout, weight, alpha, boundaries, ids, values, bool(need_v), normalize, l1, eps
        )
        dalpha = dalpha if need_a else None
        dvalues = dv if need_v else None
    return dweight, dalpha, None, None, dvalues, None, None, None, None, None


soft_select.register_autograd(_backward, setup_context=_setup_context)


# ------------------------------------------------------------------- fused optimizer


@torch.library.custom_op("mixemb::soft_select_fused_update_", mutates_args=("weight", "state"))
def soft_select_fused_update_(
    dout: Tensor,
    weight: Tensor,
    alpha: Tensor,
    boundaries: Tensor,
    ids: Tensor,
    values: Tensor | None,
    state: Tensor,
    lr: Tensor,
    optimizer: str,
    optimizer_eps: float,
) -> None:
    """Update the looked-up rows of weight in place with the weights-step gradient.

    optimizer "sgd": w -= lr·g. "rowwise_adagrad": m += mean_k g², w -= lr·g/(√m + eps)
    with state m (N,) float32. g is each row's α[block] ⊙ Σ dout (⊙ v). lr: (1,) float32.
    """
    flat, vals, d = _flat(ids, values, dout, weight.shape[1])
    if _use_kernels(weight):
        kernels.soft_select_bwd_weight(
            d, weight, alpha, boundaries, flat, vals,
            optimizer=optimizer, lr=lr, state=state, optimizer_eps=optimizer_eps,
        )  # fmt: skip
        return
    ref.fused_update_reference(
        d, weight, alpha, boundaries, flat, vals, state, lr, optimizer, optimizer_eps
    )


@soft_select_fused_update_.register_fake
def _(dout, weight, alpha, boundaries, ids, values, state, lr, optimizer, optimizer_eps):
    return None
