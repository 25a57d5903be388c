"""Pure-PyTorch references of mixemb's ops, imported by the tests **and** the benches.

Each ``*_reference`` is the plain eager expression (autograd does the backward), so it is
both the correctness oracle and the eager baseline that a fused kernel is measured against.
The ``reference_*`` functions are the hand-written backward of ``soft_select_lookup`` on
flat ids: what the op runs on CPU, checked against autograd of the expression.

Byte counting lives here, once: ``*_bytes`` give the bytes an ideal kernel must move
(read + write of DRAM, every input read once, every output written once). A bench's
memory-speed limit is ``bytes / copy_bandwidth``, where the copy bandwidth is measured in
the same run as ``2 * nbytes / time`` of ``dst.copy_(src)``.

Notation for the formulas (M lookups, U distinct ids among them, K dims, L blocks)::

    P = M * K * itemsize(dtype)          one pass over the per-lookup outputs (or dout)
    R = U * K * itemsize(dtype)          one pass over the distinct looked-up table rows
    I = M * itemsize(ids_dtype)          the ids
    V = M * itemsize(dtype)              the values (numeric fields), 0 without values
    A = L * K * itemsize(dtype)          alpha (or its gradient)
    B = (L + 1) * 8                      the int64 boundaries; U * 8 with a per-id block
                                         map (block_map=True): each looked-up id's block

    forward                 = R + P + I + V + A + B   table rows + ids (+ values) + α + bounds
                                                      in, outputs out
    backward, α step        = R + P + I + V + 2A + B  table rows + dout + ids (+ values) + α
                                                      (sign for L1) + bounds in, dα out
    backward, weights step  = P + R + I + V + A + B   dout + ids (+ values) + α + bounds in,
                                                      one gradient row per distinct id out
    padded gather (forward) = R + P + I               table rows + ids in, outputs out

``unique_rows=None`` means U = M, i.e. R = P: every lookup reads its row from DRAM. That is
an upper bound (a hot row looked up twice is counted twice) and it is what the benches use,
because it needs no ``torch.unique`` on the ids and it is the definition behind the
documented limits below; with Zipf ids caches serve the repeats, so a provider can beat it
(% of copy > 100). Passing the measured U gives the tighter, DRAM-only bound.

The weights step counts one gradient row per distinct id (the sparse / compacted form, what
a fused kernel or ``sparse=True`` writes), not a dense (N, K) gradient: zero-filling a
4M-row table per step is an artefact of dense autograd, not work the op requires.

Anchor (docs' full shape: N = 4M, K = 64, L = 10, 16384 x 26 = 425,984 lookups, fp32,
int64 ids, U = M): P = 425,984 * 64 * 4 = 109.05 MB, I = 3.41 MB. Forward + both backward
steps = 6P + 3I + small = 664.5 MB, i.e. 0.22 ms at a 3.0 TB/s copy bandwidth, the
documented fwd+bwd limit. Forward alone = 2P + I + small = 221.5 MB = 0.074 ms at
3.0 TB/s; the documented "~0.09 ms" is these bytes at ~2.46 TB/s, so it is looser than
this formula (no byte term justifies 2.5 passes; the bench reports this formula's limit).
Only looked-up rows enter, never the table's N rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mixemb.quant import INT8_ROW_BYTES, dequantize_rows_int8
from mixemb.ragged import RaggedTable, expand_bits, popcount64

__all__ = [
    "block_gather_bytes",
    "block_gather_reference",
    "block_of",
    "blocks_of",
    "equal_boundaries",
    "fused_update_reference",
    "normalize_alpha_grad",
    "padded_gather_bytes",
    "padded_gather_reference",
    "reference_alpha_values_grad",
    "reference_forward",
    "reference_gather",
    "reference_row_grads",
    "reference_scale",
    "reference_weight_grad",
    "ragged_bag_bytes",
    "ragged_bag_reference",
    "ragged_dot_bytes",
    "ragged_dot_reference",
    "ragged_gather_bytes",
    "ragged_gather_reference",
    "soft_select_alpha_grad_bytes",
    "soft_select_fused_update_bytes",
    "soft_select_lookup_backward_bytes",
    "soft_select_lookup_bytes",
    "soft_select_lookup_reference",
    "soft_select_weight_grad_bytes",
]


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
) -> None:
    """The weights step with its optimizer applied in place, as the fused kernel does.

    dout: (B, K) output gradient; weight: (N, K), updated in place; alpha (L, K);
    boundaries (L+1,) int64, or None with block_map (N,) int64; ids (B,) int32/int64;
    values (B,) or None.
    state: (N,) float32 row-wise Adagrad accumulator (updated in place; ignored by SGD).
    lr: (1,) float32 tensor. optimizer: "sgd" or "rowwise_adagrad"; eps: Adagrad's.
    Each looked-up row's gradient is g = Σ_lookups dout ⊙ alpha[block] (⊙ v), in fp32;
    "sgd": w -= lr·g; "rowwise_adagrad": m += mean_k g², w -= lr·g / (√m + eps).
    Rows not looked up are untouched.
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
    with torch.no_grad():
        weight.index_copy_(0, unique, new.to(weight.dtype))


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


# ---- serving (ragged tables) -----------------------------------------------------------
# M lookups of rows keeping d_i values each (D = Σ d_i over the lookups), value size v,
# W = ceil(K/64) mask words, output written dense:
#     ragged gather = I + M·8·W (masks) + M·8 (group offset) + D·v (kept values) + M·K·v (out)
# The masks of the ≤ G-1 rows before a row in its group share its cache lines and are not
# counted. A padded gather of the unpruned table moves 2·M·K·v + I (padded_gather_bytes).
# A bag writes B·K·v instead of M·K·v; a dot reads both rows' kept values and writes M·4.
# An int8 table (dtype "int8") reads v = 1 B per kept value plus its row's fp16 scale and
# bias (4 B per lookup) and writes float32 rows and bags (4 B per output value).


def _ragged_sizes(dtype) -> tuple[int, int, int]:
    """(bytes per kept value, bytes per looked-up row beside them, bytes per output value)
    of a table of ``dtype``: a torch float dtype or "int8"."""
    if dtype == "int8":
        return 1, INT8_ROW_BYTES, 4
    v = torch.empty((), dtype=dtype).element_size()
    return v, 0, v


def ragged_gather_bytes(
    num_lookups: int, dim: int, kept_values: int, dtype=torch.float32, ids_dtype=torch.int64
) -> int:
    """Ideal bytes of ``ragged_gather`` (see the formula above); kept_values = D; dtype a
    float dtype or "int8"."""
    v, row, out = _ragged_sizes(dtype)
    i = torch.empty((), dtype=ids_dtype).element_size()
    words = -(-dim // 64)
    return num_lookups * (i + 8 * words + 8 + row + dim * out) + kept_values * v


def ragged_bag_bytes(
    num_lookups: int,
    num_bags: int,
    dim: int,
    kept_values: int,
    dtype=torch.float32,
    ids_dtype=torch.int64,
) -> int:
    """Ideal bytes of ``ragged_bag``: the gather's reads, B·K output values."""
    v, row, out = _ragged_sizes(dtype)
    i = torch.empty((), dtype=ids_dtype).element_size()
    words = -(-dim // 64)
    reads = num_lookups * (i + 8 * words + 8 + row) + kept_values * v
    return reads + num_bags * dim * out + num_bags * 8


def ragged_dot_bytes(
    num_pairs: int, dim: int, kept_values: int, dtype=torch.float32, ids_dtype=torch.int64
) -> int:
    """Ideal bytes of ``ragged_dot``: both rows' metadata and kept values, 4 B per score."""
    v, row, _ = _ragged_sizes(dtype)
    i = torch.empty((), dtype=ids_dtype).element_size()
    words = -(-dim // 64)
    return num_pairs * 2 * (i + 8 * words + 8 + row) + kept_values * v + num_pairs * 4


# The references of the ragged serving ops (mixemb.ops.ragged), over a RaggedTable. They
# locate rows as the kernels do (group offset plus in-group popcounts), so they check the
# format as well as the kernels, and they reject an inconsistent table where the kernels
# do: the O(1) checks of every call (shapes, dtypes, group_offsets from 0 to nnz), then
# each looked-up row inside the values with no mask bit at or past K. An int8 table's
# looked-up codes are dequantized with mixemb.quant, as the kernels do on the fly.
def _check_serving_table(table: RaggedTable) -> None:
    """The checks every serving op makes before any lookup (csrc/ragged_cpu.cpp
    check_table, csrc/ragged_int8.h check_scale_bias); raises ValueError."""
    masks, values, offsets = table.masks, table.values, table.group_offsets
    n, k, g = masks.shape[0] if masks.dim() else 0, table.embedding_dim, table.group_size
    words = (k - 1) // 64 + 1 if k >= 1 else 0
    groups = (n - 1) // g + 1 if n and g >= 1 else 0
    if masks.dim() != 2 or masks.dtype != torch.int64 or k < 1 or masks.shape[1] != words:
        raise ValueError(f"masks must be (N, {words}) int64, got {tuple(masks.shape)}")
    if g < 1 or offsets.dim() != 1 or offsets.dtype != torch.int64 or len(offsets) != groups + 1:
        raise ValueError(f"group_offsets must be ({groups + 1},) int64, got {tuple(offsets.shape)}")
    sb = table.scale_bias
    if values.dim() != 1 or not (values.is_floating_point() or values.dtype == torch.uint8):
        raise ValueError(
            f"values must be 1-D float (uint8: int8), got {tuple(values.shape)} {values.dtype}"
        )
    if (values.dtype == torch.uint8) != (sb is not None):
        raise ValueError("uint8 values (an int8 table) need a scale_bias; float values none")
    if sb is not None and (sb.shape != (n, 2) or sb.dtype != torch.float16):
        raise ValueError(f"scale_bias must be ({n}, 2) float16, got {tuple(sb.shape)} {sb.dtype}")
    if int(offsets[0]) != 0 or int(offsets[-1]) != values.numel():
        raise ValueError(
            f"inconsistent ragged table: group_offsets run from {int(offsets[0])} to "
            f"{int(offsets[-1])}, values hold {values.numel()}"
        )


def ragged_gather_reference(table: RaggedTable, ids: torch.Tensor) -> torch.Tensor:
    """Torch-ops reference gather: ids (...) int32/int64 → (..., K) with zeros at pruned dims."""
    _check_serving_table(table)
    flat = ids.reshape(-1).long()
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= table.num_embeddings):
        bad = flat[(flat < 0) | (flat >= table.num_embeddings)][0]
        raise IndexError(f"id {int(bad)} out of range [0, {table.num_embeddings})")
    # A row's first value: its group's base plus the popcounts of the rows before it in
    # the group (at most group_size - 1 of them), as a serving kernel computes it.
    g = table.group_size
    group_start = flat - flat % g
    span = min(g - 1, max(table.num_embeddings - 1, 0))  # rows that can precede one
    prior = group_start.unsqueeze(1) + torch.arange(span, device=flat.device)
    before = prior < flat.unsqueeze(1)
    prior_masks = table.masks[prior.clamp(max=max(table.num_embeddings - 1, 0))]
    counts = (popcount64(prior_masks).sum(-1) * before).sum(1)
    starts = table.group_offsets[flat // g] + counts
    present = expand_bits(table.masks[flat], table.embedding_dim)
    k = table.embedding_dim
    high = (
        (table.masks[flat, -1] >> (k % 64)) != 0 if k % 64 else torch.zeros_like(flat, dtype=bool)
    )
    outside = (starts < 0) | (starts > table.nnz - present.sum(1)) | high
    if bool(outside.any()):
        row = int(flat[outside.nonzero()[0]])
        raise ValueError(f"inconsistent ragged table: row {row} lies outside the values")
    slots = starts.unsqueeze(1) + present.long().cumsum(1) - 1
    gathered = table.values[slots.clamp(min=0, max=max(table.nnz - 1, 0))] if table.nnz else None
    if gathered is not None and table.scale_bias is not None:
        gathered = dequantize_rows_int8(gathered, table.scale_bias[flat])
    out = torch.zeros(present.shape, dtype=table.rows_dtype, device=table.values.device)
    if gathered is not None:
        out = torch.where(present, gathered, out)
    return out.reshape(*ids.shape, table.embedding_dim)


def ragged_bag_reference(
    table: RaggedTable,
    ids: torch.Tensor,
    offsets: torch.Tensor,
    *,
    mode: str = "sum",
    per_sample_weights: torch.Tensor | None = None,
    include_last_offset: bool = False,
) -> torch.Tensor:
    """Pooled bags, ``nn.EmbeddingBag`` semantics: ids (M,) flat, offsets (B,) starts (or
    (B+1,) with ``include_last_offset``); mode "sum" or "mean"; per_sample_weights (M,)
    only with "sum". Returns (B, K); an empty bag gives zeros."""
    if mode not in ("sum", "mean"):
        raise ValueError(f"mode must be sum or mean, got {mode!r}")
    if per_sample_weights is not None and mode != "sum":
        raise ValueError("per_sample_weights only work with mode='sum'")
    rows = ragged_gather_reference(table, ids.reshape(-1))
    if per_sample_weights is not None:
        rows = rows * per_sample_weights.reshape(-1, 1).to(rows.dtype)
    offsets = offsets.long()
    if include_last_offset:
        starts, ends = offsets[:-1], offsets[1:]
    else:
        starts, ends = offsets, torch.cat([offsets[1:], offsets.new_tensor([ids.numel()])])
    if len(starts) and int(starts[0]) != 0:
        raise ValueError(f"offsets must start at 0, got {int(starts[0])}")
    lengths = ends - starts
    if bool((lengths < 0).any()):
        raise ValueError("offsets must be non-decreasing")
    bag = torch.repeat_interleave(torch.arange(len(starts), device=rows.device), lengths)
    out = torch.zeros(len(starts), table.embedding_dim, dtype=rows.dtype, device=rows.device)
    out.index_add_(0, bag, rows[: len(bag)])
    if mode == "mean":
        out = out / lengths.clamp(min=1).unsqueeze(1).to(out.dtype)
    return out


def ragged_dot_reference(
    table_a: RaggedTable, ids_a: torch.Tensor, table_b: RaggedTable, ids_b: torch.Tensor
) -> torch.Tensor:
    """MF scores (B,): Σ_k a[ids_a, k]·b[ids_b, k] over the dims both rows keep."""
    if table_a.embedding_dim != table_b.embedding_dim:
        raise ValueError(
            f"embedding dims differ: {table_a.embedding_dim} and {table_b.embedding_dim}"
        )
    a = ragged_gather_reference(table_a, ids_a)
    b = ragged_gather_reference(table_b, ids_b)
    acc = torch.float64 if a.dtype == torch.float64 else torch.float32
    return (a.to(acc) * b.to(acc)).sum(-1)


# ---- serving (block tables) ------------------------------------------------------------
# M lookups, L blocks, D = Σ d_l over the lookups' blocks, v, out as for ragged tables:
#     block gather = I + D·v + M·4 (int8 scale and bias) + M·K·out + (L+1)·8 + L·(24 + 4K)
# the last two terms: the boundaries and the serving index (layout, rank), read once.
def block_gather_bytes(num_lookups, num_blocks, dim, kept_values, dtype=torch.float32) -> int:
    """Ideal bytes of ``block_gather`` with int64 ids; dtype a float dtype or "int8"."""
    v, row, out = _ragged_sizes(dtype)
    index = (num_blocks + 1) * 8 + num_blocks * (24 + 4 * dim)
    return num_lookups * (8 + row + dim * out) + kept_values * v + index


def block_gather_reference(table, ids: torch.Tensor) -> torch.Tensor:
    """ids (...) int32/int64 in [0, N) of a BlockTable → (..., K) in its rows_dtype, zeros
    at the columns a row's block drops: block by block, from each block's dense table."""
    flat, n = ids.reshape(-1).long(), table.num_embeddings
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= n):
        raise ValueError(f"ids must be in [0, {n}), got {int(flat.min())}…{int(flat.max())}")
    out = flat.new_zeros(flat.numel(), table.embedding_dim, dtype=table.rows_dtype)
    bounds, mask = table.boundaries.tolist(), table.block_mask()
    for block, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
        hit = ((flat >= lo) & (flat < hi)).nonzero().flatten()
        cols = mask[block].nonzero().flatten()
        out[hit[:, None], cols] = table.block_values(block)[flat[hit] - lo]
    return out.reshape(*ids.shape, table.embedding_dim)
