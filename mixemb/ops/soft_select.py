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

BACKENDS = ("auto", "reference")


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


class _SoftSelectLookup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, alpha, boundaries, ids, values, normalize, l1, eps, sparse):
        flat = ids.reshape(-1).long()
        blocks = block_of(flat, boundaries)
        rows = weight.index_select(0, flat)
        scale = alpha.index_select(0, blocks)
        out = rows * scale
        if values is not None:
            out = out * values.reshape(-1, 1).to(out.dtype)
        ctx.save_for_backward(weight, alpha, flat, blocks, values)
        ctx.ids_shape = ids.shape
        ctx.cfg = (normalize, l1, eps, sparse)
        return out.reshape(*ids.shape, weight.shape[1])

    @staticmethod
    def backward(ctx, dout):
        weight, alpha, flat, blocks, values = ctx.saved_tensors
        normalize, l1, eps, sparse = ctx.cfg
        num_rows, dim = weight.shape
        dout = dout.reshape(-1, dim)
        vals = None if values is None else values.reshape(-1, 1).to(dout.dtype)
        dweight = dalpha = dvalues = None
        need_w, need_a, _, _, need_v = ctx.needs_input_grad[:5]
        if need_w:
            g_rows = dout * alpha.index_select(0, blocks).to(dout.dtype)
            if vals is not None:
                g_rows = g_rows * vals
            if sparse:
                dweight = torch.sparse_coo_tensor(
                    flat.unsqueeze(0),
                    g_rows.to(weight.dtype),
                    (num_rows, dim),
                    check_invariants=False,
                )
            else:
                dweight = torch.zeros_like(weight).index_add_(0, flat, g_rows.to(weight.dtype))
        if need_a or need_v:
            prod = weight.index_select(0, flat).to(dout.dtype) * dout
            if need_v:
                scale = alpha.index_select(0, blocks).to(dout.dtype)
                dvalues = (prod * scale).sum(1).reshape(ctx.ids_shape).to(values.dtype)
            if need_a:
                if vals is not None:
                    prod = prod * vals
                acc = torch.promote_types(alpha.dtype, torch.float32)
                g = torch.zeros(alpha.shape, dtype=acc, device=alpha.device)
                g.index_add_(0, blocks, prod.to(acc))
                g = g + l1 * torch.sign(alpha.to(acc))
                if normalize:
                    g = g / (g.abs().mean(dim=1, keepdim=True) + eps)
                dalpha = g.to(alpha.dtype)
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
    backend: "reference" (pure PyTorch) or "auto" (the fastest available; today the
        reference on every device).
    Returns (..., K) in weight's dtype.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    _check(weight, alpha, boundaries, ids, values)
    return _SoftSelectLookup.apply(
        weight, alpha, boundaries, ids, values, normalize, float(l1), float(eps), sparse
    )
