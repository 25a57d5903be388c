"""References of the training ops: ``soft_select_lookup`` (the DNIS lookup × α), its
hand-written backward and fused update, the soft-select bag, and the padded gather they
are measured against; with the bytes each must move (formulas in :mod:`mixemb.reference`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def equal_boundaries(num_rows: int, num_blocks: int) -> torch.Tensor:
    """(L+1,) int64 boundaries of ``num_blocks`` near-equal contiguous id blocks.

    num_rows: N >= num_blocks >= 1. Block l holds ids [b_l, b_{l+1}); sizes differ by at
    most one, larger blocks first (like ``torch.tensor_split``).
    Returns (num_blocks + 1,) int64 with b_0 = 0 and b_L = N, strictly increasing.
    """
    if num_blocks < 1 or num_rows < num_blocks:
        raise ValueError(f"need num_rows >= num_blocks >= 1, got {num_rows=} {num_blocks=}")
    base, extra = divmod(num_rows, num_blocks)
    sizes = torch.full((num_blocks,), base, dtype=torch.int64)
    sizes[:extra] += 1
    return torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(sizes, 0)])


def block_of(ids: torch.Tensor, boundaries: torch.Tensor) -> torch.Tensor:
    """Frequency block of each id, computed from the boundaries (no per-row array).

    ids: (...) int32/int64 in [0, N).
    boundaries: (L+1,) int64, boundaries[0] = 0 < ... < boundaries[L] = N.
    Returns (...) int64: the l with boundaries[l] <= id < boundaries[l+1].
    """
    # counting the inner boundaries <= id equals searchsorted(boundaries) - 1 for ids in
    # range, without the extra pass of the subtraction
    return torch.searchsorted(boundaries[1:-1], ids.to(torch.int64), right=True)


def blocks_of(
    ids: torch.Tensor, boundaries: torch.Tensor | None, block_map: torch.Tensor | None = None
) -> torch.Tensor:
    """(...) int64 block of each id of ids (...) int32/int64: block_map[ids] where the
    block map (N,) int64 is given, else block_of(ids, boundaries (L+1,) int64)."""
    if block_map is not None:
        return block_map[ids.to(torch.int64)]
    return block_of(ids, boundaries)


def soft_select_lookup_reference(
    weight: torch.Tensor,
    alpha: torch.Tensor,
    boundaries: torch.Tensor | None,
    ids: torch.Tensor,
    values: torch.Tensor | None = None,
    *,
    block_map: torch.Tensor | None = None,
) -> torch.Tensor:
    """DNIS lookup x alpha, unfused and in eager autograd: weight[ids] * alpha[block(ids)].

    weight: (N, K) float embedding table E.
    alpha: (L, K) float soft selection layer α.
    boundaries: (L+1,) int64 block boundaries (see ``block_of``), or None with block_map.
    ids: (...) int32/int64 feature ids in [0, N).
    values: (...) float per-lookup multipliers (numeric fields) or None.
    block_map: (N,) int64 block of every id (ids need not be frequency-sorted), or None.
    Returns (..., K): out[..., k] = weight[id, k] * alpha[block(id), k] (* values[...]).
    Gradients are whatever autograd gives: a dense (N, K) weight gradient that accumulates
    duplicate ids, and alpha's gradient summed per block (not normalized; see
    ``normalize_alpha_grad``).
    """
    idx = ids.to(torch.int64)
    out = weight[idx] * alpha[blocks_of(idx, boundaries, block_map)]
    if values is not None:
        out = out * values.unsqueeze(-1)
    return out


def normalize_alpha_grad(
    g: torch.Tensor, alpha: torch.Tensor, l1: float = 0.0, eps: float = 1e-8
) -> torch.Tensor:
    """DNIS α-step gradient: L1 term inside, then per-block-row normalization.

    g: (L, K) float gradient of the validation loss w.r.t. α.
    alpha: (L, K) float current α (only its sign is used, for the L1 term).
    l1: λ of λ·Σ|α| (default 0.0; the authors use 1e-5).
    eps: stabilizer (default 1e-8, the authors' value); an all-zero row stays 0.
    Returns (L, K): h / (mean_k |h| + eps) with h = g + l1 * sign(alpha).
    """
    h = g + l1 * torch.sign(alpha)
    return h / (h.abs().mean(dim=1, keepdim=True) + eps)


# ---- the hand-written backward of soft_select_lookup ----------------------------------
# The math of mixemb.ops.soft_select's CPU path (and of its reference backend): ids, values
# and dout arrive flat, flat (B,) int64, values (B,) or None, dout (B, K); the block of an
# id comes from boundaries (L+1,) or, when given, block_map (N,) int64. The op keeps
# the gathered rows / α rows of its forward and passes them back in, so its backward does
# not gather again; passing None recomputes them (same values).


def reference_gather(
    weight: torch.Tensor, alpha: torch.Tensor, boundaries, flat: torch.Tensor, block_map=None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, scale, blocks): weight[flat] (B, K), alpha[block(flat)] (B, K), block(flat) (B,)
    int64, for flat (B,) int64 ids."""
    blocks = blocks_of(flat, boundaries, block_map)
    return weight.index_select(0, flat), alpha.index_select(0, blocks), blocks


def reference_scale(
    rows: torch.Tensor, scale: torch.Tensor, values: torch.Tensor | None
) -> torch.Tensor:
    """(B, K) = rows * scale (* values[:, None]) in promote_types(rows, scale)."""
    out = rows * scale
    if values is not None:
        out = out * values.reshape(-1, 1).to(out.dtype)
    return out


def reference_forward(weight, alpha, boundaries, flat, values, block_map=None):
    """(B, K) = weight[flat] * alpha[block(flat)] (* values[:, None]); flat (B,) int64."""
    rows, scale, _ = reference_gather(weight, alpha, boundaries, flat, block_map)
    return reference_scale(rows, scale, values)


def reference_row_grads(
    dout, weight, alpha, boundaries, flat, values, scale=None, block_map=None
):  # fmt: skip
    """(B, K) per-lookup weight gradients dout * alpha[block] (* v) in weight's dtype.

    scale: alpha[block(flat)] (B, K) when the caller kept it from the forward.
    """
    if scale is None:
        scale = alpha.index_select(0, blocks_of(flat, boundaries, block_map))
    g_rows = dout * scale.to(dout.dtype)
    if values is not None:
        g_rows = g_rows * values.reshape(-1, 1).to(dout.dtype)
    return g_rows.to(weight.dtype)


def reference_weight_grad(
    dout, weight, alpha, boundaries, flat, values, scale=None, block_map=None
):  # fmt: skip
    """(N, K) dense weight gradient in weight's dtype: the row grads summed per id."""
    rows = reference_row_grads(dout, weight, alpha, boundaries, flat, values, scale, block_map)
    # index_put_(accumulate) is ~3x faster than index_add_ on CPU for many repeated ids
    return torch.zeros_like(weight).index_put_((flat,), rows, accumulate=True)


def reference_alpha_values_grad(
    dout, weight, alpha, boundaries, flat, values, need_alpha, need_values, normalize, l1, eps,
    rows=None, blocks=None, block_map=None,
):  # fmt: skip
    """(dalpha (L, K) in alpha's dtype or None, dvalues (B,) in values' dtype or None).

    dalpha = Σ_{lookups in block l} weight[id] * dout (* v) summed in at least fp32, then
    ``normalize_alpha_grad`` (L1 term inside) when normalize, else only the L1 term.
    dvalues[b] = Σ_k weight[id] * alpha[block] * dout. rows, blocks: weight[flat] and
    block(flat) when the caller kept them from the forward.
    """
    if blocks is None:
        blocks = blocks_of(flat, boundaries, block_map)
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
        if normalize:
            g = normalize_alpha_grad(g, alpha.to(acc), l1, eps)
        else:
            g = g + l1 * torch.sign(alpha.to(acc))
        dalpha = g.to(alpha.dtype)
    return dalpha, dvalues


def fused_update_reference(
    dout: torch.Tensor,
    weight: torch.Tensor,
    alpha: torch.Tensor,
    boundaries: torch.Tensor,
    ids: torch.Tensor,
    values: torch.Tensor | None,
    state: torch.Tensor,
    lr: torch.Tensor,
    optimizer: str,
    eps: float = 1e-8,
    block_map: torch.Tensor | None = None,
    *,
    stochastic_rounding: bool = False,
    seed: int = 0,
) -> None:
    """The weights step with its optimizer applied in place, as the fused kernel does.

    dout: (B, K) output gradient; weight: (N, K), updated in place (any strides);
    alpha (L, K);
    boundaries (L+1,) int64, or None with block_map (N,) int64; ids (B,) int32/int64;
    values (B,) or None.
    state: (N,) float32 row-wise Adagrad accumulator (updated in place; ignored by SGD).
    lr: (1,) float32 tensor. optimizer: "sgd" or "rowwise_adagrad"; eps: Adagrad's.
    Each looked-up row's gradient is g = Σ_lookups dout ⊙ alpha[block] (⊙ v), in fp32;
    "sgd": w -= lr·g; "rowwise_adagrad": m += mean_k g², w -= lr·g / (√m + eps).
    Rows not looked up are untouched. The fp32 result is rounded to weight's dtype to
    nearest, or with stochastic_rounding (fp16 / bf16 tables; ignored otherwise) by
    ``stochastic_round`` with uniforms drawn from a torch.Generator seeded with ``seed``
    (the kernel's rounding, not its random stream: Triton's Philox draws other numbers).
    """
    if optimizer not in ("sgd", "rowwise_adagrad"):
        raise ValueError(f"optimizer must be 'sgd' or 'rowwise_adagrad', got {optimizer!r}")
    flat = ids.reshape(-1).long()
    if flat.numel() == 0:
        return
    rows = dout.float() * alpha.float()[blocks_of(flat, boundaries, block_map)]
    if values is not None:
        rows = rows * values.reshape(-1, 1).float()
    unique, inverse = torch.unique(flat, return_inverse=True)
    g = torch.zeros(unique.numel(), weight.shape[1], device=weight.device).index_add_(
        0, inverse, rows
    )
    step = lr.reshape(()).float()
    if optimizer == "rowwise_adagrad":
        m = state[unique] + (g * g).mean(dim=1)
        state.index_copy_(0, unique, m)
        g = g / (m.sqrt() + eps).unsqueeze(1)
    new = weight[unique].float() - step * g
    if stochastic_rounding and weight.dtype in (torch.float16, torch.bfloat16):
        gen = torch.Generator(device=weight.device).manual_seed(int(seed))
        u = torch.rand(new.shape, generator=gen, device=weight.device)
        new = stochastic_round(new, weight.dtype, u)
    with torch.no_grad():
        weight.index_copy_(0, unique, new.to(weight.dtype))


def stochastic_round(x: torch.Tensor, dtype: torch.dtype, u: torch.Tensor) -> torch.Tensor:
    """x (...) float32 rounded to dtype (float16 / bfloat16) stochastically, given u (...)
    uniform in [0, 1): the representable neighbour farther from zero with probability
    (|x| - |near|) / (|far| - |near|), else the nearer one — so E[result] = x (unbiased),
    where round-to-nearest loses any change below half an ulp. Values that are exact,
    ±inf or nan round to nearest. Returns (...) in dtype; the fused kernel's rounding.
    """
    nearest = x.to(dtype)
    nf = nearest.float()
    away = x.abs() > nf.abs()
    # the other neighbour: one step of the integer encoding away from or toward zero
    step = torch.where(away, 1, -1).to(torch.int16)
    other = (nearest.view(torch.int16) + step).view(dtype).float()
    near, far = torch.where(away, nf, other), torch.where(away, other, nf)
    keep = (nf == x) | nf.isinf() | x.isnan()
    gap = torch.where(keep, 1.0, far.abs() - near.abs())
    p_far = (x.abs() - near.abs()) / gap
    return torch.where(keep, nf, torch.where(u < p_far, far, near)).to(dtype)


def padded_gather_reference(weight: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Plain padded lookup, the uniform-dimension baseline.

    weight: (N, K) float; ids: (...) int32/int64 in [0, N).
    Returns (..., K) = F.embedding(ids, weight).
    """
    return F.embedding(ids, weight)


def _terms(num_lookups, dim, num_blocks, dtype, ids_dtype, with_values, unique_rows, by_map=False):
    if unique_rows is None:
        unique_rows = num_lookups
    if not 0 <= unique_rows <= num_lookups:
        raise ValueError(f"need 0 <= unique_rows <= num_lookups, got {unique_rows=} {num_lookups=}")
    item = dtype.itemsize
    outs = num_lookups * dim * item
    rows = unique_rows * dim * item
    ids = num_lookups * ids_dtype.itemsize
    vals = num_lookups * item if with_values else 0
    alpha = num_blocks * dim * item
    bounds = unique_rows * 8 if by_map else (num_blocks + 1) * 8
    return outs, rows, ids, vals, alpha, bounds


def soft_select_lookup_bytes(
    num_lookups: int,
    dim: int,
    num_blocks: int,
    dtype: torch.dtype = torch.float32,
    ids_dtype: torch.dtype = torch.int64,
    with_values: bool = False,
    unique_rows: int | None = None,
    block_map: bool = False,
) -> int:
    """Ideal forward bytes of lookup x α: R + P + I + V + A + B (module docstring).

    num_lookups: M; dim: K; num_blocks: L; dtype: weight/alpha/output dtype (default
    float32); ids_dtype: default int64; with_values: numeric-field multipliers (default
    False); unique_rows: U distinct ids, default None = M (the upper bound the benches use);
    block_map: blocks read from a per-id block map (U·8 bytes) instead of boundaries.
    """
    p, r, i, v, a, b = _terms(
        num_lookups, dim, num_blocks, dtype, ids_dtype, with_values, unique_rows, block_map
    )
    return r + p + i + v + a + b


def soft_select_alpha_grad_bytes(
    num_lookups: int,
    dim: int,
    num_blocks: int,
    dtype: torch.dtype = torch.float32,
    ids_dtype: torch.dtype = torch.int64,
    with_values: bool = False,
    unique_rows: int | None = None,
    block_map: bool = False,
) -> int:
    """Ideal bytes of the α step's backward: R + P + I + V + 2A + B (rows + dout in, dα out).

    Arguments as in ``soft_select_lookup_bytes``.
    """
    p, r, i, v, a, b = _terms(
        num_lookups, dim, num_blocks, dtype, ids_dtype, with_values, unique_rows, block_map
    )
    return r + p + i + v + 2 * a + b


def soft_select_weight_grad_bytes(
    num_lookups: int,
    dim: int,
    num_blocks: int,
    dtype: torch.dtype = torch.float32,
    ids_dtype: torch.dtype = torch.int64,
    with_values: bool = False,
    unique_rows: int | None = None,
    block_map: bool = False,
) -> int:
    """Ideal bytes of the weights step's backward: P + R + I + V + A + B (dout in, rows out).

    Arguments as in ``soft_select_lookup_bytes``.
    """
    p, r, i, v, a, b = _terms(
        num_lookups, dim, num_blocks, dtype, ids_dtype, with_values, unique_rows, block_map
    )
    return p + r + i + v + a + b


def soft_select_lookup_backward_bytes(
    num_lookups: int,
    dim: int,
    num_blocks: int,
    dtype: torch.dtype = torch.float32,
    ids_dtype: torch.dtype = torch.int64,
    with_values: bool = False,
    unique_rows: int | None = None,
    block_map: bool = False,
) -> int:
    """Ideal bytes of both backward steps (α step + weights step); arguments as above."""
    args = (num_lookups, dim, num_blocks, dtype, ids_dtype, with_values, unique_rows)
    kw = dict(block_map=block_map)
    return soft_select_alpha_grad_bytes(*args, **kw) + soft_select_weight_grad_bytes(*args, **kw)


def soft_select_fused_update_bytes(
    num_lookups: int,
    dim: int,
    num_blocks: int,
    dtype: torch.dtype = torch.float32,
    ids_dtype: torch.dtype = torch.int64,
    with_values: bool = False,
    unique_rows: int | None = None,
    optimizer: str = "sgd",
    block_map: bool = False,
) -> int:
    """Ideal bytes of the weights step with its optimizer fused: P + 2R + I + V + A + B
    (dout in, each distinct row read and written back), + 8U for row-wise Adagrad's fp32
    accumulator (read and written). Other arguments as in ``soft_select_lookup_bytes``.
    """
    p, r, i, v, a, b = _terms(
        num_lookups, dim, num_blocks, dtype, ids_dtype, with_values, unique_rows, block_map
    )
    u = num_lookups if unique_rows is None else unique_rows
    state = 8 * u if optimizer == "rowwise_adagrad" else 0
    return p + 2 * r + i + v + a + b + state


def padded_gather_bytes(
    num_lookups: int,
    dim: int,
    dtype: torch.dtype = torch.float32,
    ids_dtype: torch.dtype = torch.int64,
    unique_rows: int | None = None,
) -> int:
    """Ideal bytes of a padded gather forward: R + P + I (rows + ids in, outputs out).

    Arguments as in ``soft_select_lookup_bytes`` (no alpha, bounds or values).
    """
    p, r, i, _, _, _ = _terms(num_lookups, dim, 0, dtype, ids_dtype, False, unique_rows)
    return r + p + i


# ---- soft_select_bag: the lookup × α pooled per bag --------------------------------------


def soft_select_bag_reference(
    weight: torch.Tensor,
    alpha: torch.Tensor,
    boundaries: torch.Tensor | None,
    ids: torch.Tensor,
    offsets: torch.Tensor,
    per_sample_weights: torch.Tensor | None = None,
    *,
    mode: str = "sum",
    padding_idx: int | None = None,
    block_map: torch.Tensor | None = None,
) -> torch.Tensor:
    """The bag op unfused in eager autograd: ``soft_select_lookup_reference``, then
    ``F.embedding_bag`` over the looked-up rows.

    weight: (N, K) float; alpha: (L, K); boundaries: (L+1,) int64 or None with
    block_map (N,) int64. ids: (M,) int32/int64. offsets: (B+1,) int (bag b is
    [offsets[b], offsets[b+1])). per_sample_weights: (M,) float or None (mode "sum").
    mode: "sum", "mean" or "max". padding_idx: an id left out of its bag (and of mean's
    count), or None. Returns (B, K) in promote_types(weight, alpha); α's gradient is
    autograd's (not normalized).
    """
    rows = soft_select_lookup_reference(weight, alpha, boundaries, ids, block_map=block_map)
    # padding lookups, and those past the last offset, point at an appended zero row:
    # F.embedding_bag's backward fills lookups past the last offset with garbage otherwise
    offsets, m = offsets.long(), ids.numel()
    slot = torch.arange(m, device=ids.device)
    dropped = slot >= offsets[-1]
    if padding_idx is not None:
        dropped |= ids.long() == padding_idx
    rows = torch.cat([rows, rows.new_zeros(1, rows.shape[1])])
    psw = None if per_sample_weights is None else per_sample_weights.to(rows.dtype)
    slot = slot.masked_fill(dropped, m)
    return F.embedding_bag(
        slot, rows, offsets, mode=mode, per_sample_weights=psw, include_last_offset=True,
        padding_idx=m,
    )  # fmt: skip


def soft_select_bag_bytes(
    num_lookups: int,
    num_bags: int,
    dim: int,
    num_blocks: int,
    dtype: torch.dtype = torch.float32,
    *,
    step: str | None = None,
    **lookup,
) -> int:
    """Ideal bytes of the bag op: the lookup formulas above with the pass
    over per-lookup outputs (P = M·K·item) replaced by one over the bags (B·K·item) plus
    the (B+1)·8 offsets. step: None (forward), "alpha" or "weights" (that step's backward).
    lookup: ``soft_select_lookup_bytes``'s keyword arguments (ids_dtype,
    with_values, unique_rows, block_map).
    """
    per_step = {
        None: soft_select_lookup_bytes,
        "alpha": soft_select_alpha_grad_bytes,
        "weights": soft_select_weight_grad_bytes,
    }
    if step not in per_step:
        raise ValueError(f"step must be None, 'alpha' or 'weights', got {step!r}")
    total = per_step[step](num_lookups, dim, num_blocks, dtype, **lookup)
    item = torch.empty((), dtype=dtype).element_size()
    return total - num_lookups * dim * item + num_bags * dim * item + (num_bags + 1) * 8
