"""``soft_select_lookup``: the DNIS lookup × α op with its own backward.

out[..., :] = weight[ids] ⊙ alpha[block(ids)] (⊙ values[..., None])

The backward is written by hand (not autograd of the expression) because DNIS wants
two things autograd does not give:

* the α gradient **already normalized per block row**, in the order of the authors'
  code — L1 term inside, then normalization::

      g = Σ_{lookups in block l} weight[id] ⊙ dout (⊙ value)        # (L, K)
      g = g + l1 · sign(alpha)
      g̃ = g / (mean_k |g| + eps)          (only when normalize=True)

* the weight gradient as dense rows or as a sparse COO tensor of the looked-up rows,
  like ``nn.Embedding(sparse=True)``, so a 4M-row table is not densified per step.

This signature is the contract that the fused Triton op (``backend="triton"``) will
implement exactly; ``backend="reference"`` is this pure-PyTorch path.
"""

from __future__ import annotations

import torch

from mixemb.reference import block_of

BACKENDS = ("auto", "reference", "triton")


def _check(weight, alpha, boundaries, ids, values) -> None:
    if weight.dim() != 2:
        raise ValueError(f"weight must be (N, K), got shape {tuple(weight.shape)}")
    if alpha.dim() != 2 or alpha.shape[1] != weight.shape[1]:
        raise ValueError(f"alpha must be (L, K={weight.shape[1]}), got shape {tuple(alpha.shape)}")
    if boundaries.dim() != 1 or boundaries.numel() != alpha.shape[0] + 1:
        raise ValueError(
            f"boundaries must be (L+1,) = ({alpha.shape[0] + 1},), got {tuple(boundaries.shape)}"
        )
    if boundaries.dtype != torch.int64:
        raise ValueError(f"boundaries must be int64, got {boundaries.dtype}")
    if ids.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"ids must be int32 or int64, got {ids.dtype}")
    if values is not None and values.shape != ids.shape:
        raise ValueError(f"values must match ids {tuple(ids.shape)}, got {tuple(values.shape)}")


# --- the reference math, shared by the autograd.Function below and by the CPU kernels of
# --- the registered ops (mixemb.ops.soft_select_triton). ids/values/dout are flat here.


def reference_forward(weight, alpha, boundaries, flat, values):
    """(B, K) = weight[flat] * alpha[block(flat)] (* values[:, None]); flat (B,) int64."""
    return _scaled(weight.index_select(0, flat), _scale_of(alpha, boundaries, flat), values)


def _scale_of(alpha, boundaries, flat):
    return alpha.index_select(0, block_of(flat, boundaries))


def _scaled(rows, scale, values):
    out = rows * scale
    if values is not None:
        out = out * values.reshape(-1, 1).to(out.dtype)
    return out


def reference_row_grads(dout, weight, alpha, boundaries, flat, values, scale=None):
    """(B, K) per-lookup weight gradients dout * alpha[block] (* v) in weight's dtype.

    scale: alpha[block(flat)] when the caller kept it from the forward.
    """
    if scale is None:
        scale = _scale_of(alpha, boundaries, flat)
    g_rows = dout * scale.to(dout.dtype)
    if values is not None:
        g_rows = g_rows * values.reshape(-1, 1).to(dout.dtype)
    return g_rows.to(weight.dtype)


def reference_weight_grad(dout, weight, alpha, boundaries, flat, values, scale=None):
    """(N, K) dense weight gradient: the row grads summed per id."""
    rows = reference_row_grads(dout, weight, alpha, boundaries, flat, values, scale)
    # index_put_(accumulate) is ~3x faster than index_add_ on CPU for many repeated ids
    return torch.zeros_like(weight).index_put_((flat,), rows, accumulate=True)


def reference_alpha_values_grad(
    dout, weight, alpha, boundaries, flat, values, need_alpha, need_values, normalize, l1, eps,
    rows=None, blocks=None,
):  # fmt: skip
    """(dalpha (L, K) or None, dvalues (B,) or None); see the module docstring.

    rows, blocks: weight[flat] and block(flat) when the caller kept them from the forward.
    """
    if blocks is None:
        blocks = block_of(flat, boundaries)
    if rows is None:
        rows = weight.index_select(0, flat)
    prod = rows.to(dout.dtype) * dout
    dalpha = dvalues = None
    if need_values:
        scale = alpha.index_select(0, blocks).to(dout.dtype)
        dvalues = (prod * scale).sum(1).to(values.dtype)
    if need_alpha:
        if values is not None:
            prod = prod * values.reshape(-1, 1).to(dout.dtype)
        acc = torch.promote_types(alpha.dtype, torch.float32)
        g = torch.zeros(alpha.shape, dtype=acc, device=alpha.device)
        g.index_put_((blocks,), prod.to(acc), accumulate=True)
        g = g + l1 * torch.sign(alpha.to(acc))
        if normalize:
            g = g / (g.abs().mean(dim=1, keepdim=True) + eps)
        dalpha = g.to(alpha.dtype)
    return dalpha, dvalues


class _SoftSelectLookup(torch.autograd.Function):
    """The reference op. Like eager autograd, the forward keeps the gathered table rows
    (for α's and values' gradients) and α rows (for the table's), so the backward does not
    gather again; only what the inputs that need grad use is kept."""

    @staticmethod
    def forward(ctx, weight, alpha, boundaries, ids, values, normalize, l1, eps, sparse):
        flat = ids.reshape(-1).long()
        vals = None if values is None else values.reshape(-1)
        blocks = block_of(flat, boundaries)
        rows = weight.index_select(0, flat)
        scale = alpha.index_select(0, blocks)
        out = _scaled(rows, scale, vals)
        need_w, need_a, _, _, need_v = ctx.needs_input_grad[:5]
        ctx.save_for_backward(
            weight, alpha, boundaries, flat, vals, blocks,
            rows if (need_a or need_v) else None, scale if need_w else None,
        )  # fmt: skip
        ctx.ids_shape = ids.shape
        ctx.cfg = (normalize, l1, eps, sparse)
        return out.reshape(*ids.shape, weight.shape[1])

    @staticmethod
    def backward(ctx, dout):
        weight, alpha, boundaries, flat, vals, blocks, rows, scale = ctx.saved_tensors
        normalize, l1, eps, sparse = ctx.cfg
        dout = dout.reshape(-1, weight.shape[1])
        dweight = dalpha = dvalues = None
        need_w, need_a, _, _, need_v = ctx.needs_input_grad[:5]
        if need_w:
            if sparse:
                g_rows = reference_row_grads(dout, weight, alpha, boundaries, flat, vals, scale)
                dweight = torch.sparse_coo_tensor(
                    flat.unsqueeze(0), g_rows, weight.shape, check_invariants=False
                )
            else:
                dweight = reference_weight_grad(dout, weight, alpha, boundaries, flat, vals, scale)
        if need_a or need_v:
            dalpha, dvalues = reference_alpha_values_grad(
                dout, weight, alpha, boundaries, flat, vals, need_a, need_v, normalize, l1, eps,
                rows=rows, blocks=blocks,
            )  # fmt: skip
            if dvalues is not None:
                dvalues = dvalues.reshape(ctx.ids_shape)
        return dweight, dalpha, None, None, dvalues, None, None, None, None


def soft_select_lookup(
    weight: torch.Tensor,
    alpha: torch.Tensor,
    boundaries: torch.Tensor,
    ids: torch.Tensor,
    values: torch.Tensor | None = None,
    *,
    normalize: bool = True,
    l1: float = 0.0,
    eps: float = 1e-8,
    sparse: bool = False,
    backend: str = "auto",
    deterministic: bool = True,
    check_ids: bool | None = None,
    fused_optimizer=None,
) -> torch.Tensor:
    """Look up rows and scale them by their frequency block's soft selection row.

    weight: (N, K) float32/float16/bfloat16 embedding table E.
    alpha: (L, K) soft selection layer α (same device as weight).
    boundaries: (L+1,) int64, boundaries[0] = 0 < … < boundaries[L] = N; block l holds
        the ids in [boundaries[l], boundaries[l+1]).
    ids: (...) int32/int64 feature ids in [0, N).
    values: (...) optional per-lookup multipliers (numeric fields).
    normalize: return α's gradient normalized per block row (see module docstring).
    l1: λ of the L1 term λ·Σ|α|, added to α's gradient before normalization.
    eps: the normalization's stabilizer (default 1e-8, the authors' value).
    sparse: weight's gradient as a sparse COO tensor of looked-up rows.
    backend: "reference" (pure PyTorch, this module), "triton" (the registered ops of
        ``mixemb.ops.soft_select_triton``: Triton kernels on CUDA, the reference math on
        CPU) or "auto" (triton on CUDA, reference on CPU).
    deterministic: the Triton weights-step gradient by sort + run reduction (bitwise
        reproducible, the default) instead of atomic adds. α's gradient is always
        deterministic.
    check_ids: raise ValueError for ids outside [0, N) (one host sync). Default: on for
        CPU tensors, off for CUDA (the kernels then read zeros for bad ids, never out
        of bounds).
    fused_optimizer: a ``mixemb.ops.FusedOptimizer``: the table is updated inside the
        backward (Triton/registered path) and gets no gradient.
    Returns (..., K) in torch.promote_types(weight.dtype, alpha.dtype).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    _check(weight, alpha, boundaries, ids, values)
    if check_ids if check_ids is not None else not ids.is_cuda:
        _check_ids_in_range(ids, weight.shape[0])
    if backend == "auto":
        backend = "triton" if weight.is_cuda else "reference"
    if fused_optimizer is not None:
        from mixemb.ops.fused_optimizer import FusedSoftSelect

        if sparse:
            raise ValueError("fused_optimizer updates the table itself: sparse must be False")
        return FusedSoftSelect.apply(
            weight, alpha, boundaries, ids, values, normalize, float(l1), float(eps),
            fused_optimizer,
        )  # fmt: skip
    if backend == "triton":
        from mixemb.ops import soft_select_triton

        return soft_select_triton.soft_select(
            weight, alpha, boundaries, ids, values,
            normalize, float(l1), float(eps), sparse, deterministic,
        )  # fmt: skip
    return _SoftSelectLookup.apply(
        weight, alpha, boundaries, ids, values, normalize, float(l1), float(eps), sparse
    )


def _check_ids_in_range(ids: torch.Tensor, num_rows: int) -> None:
    if ids.numel() == 0 or torch.compiler.is_compiling():
        return
    bad = (ids < 0) | (ids >= num_rows)
    if bool(bad.any()):
        first = int(bad.reshape(-1).nonzero()[0])
        raise ValueError(
            f"ids[{first}] (flattened) = {int(ids.reshape(-1)[first])} is outside the "
            f"table's rows [0, {num_rows})"
        )
