"""Pure-PyTorch references of mixemb's ops, imported by the tests **and** the benches:
``mixemb.reference.soft_select`` (training) and ``mixemb.reference.serving`` (serving).

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

from mixemb.reference.serving import (
    block_gather_bytes,
    block_gather_reference,
    padded_bag_bytes,
    padded_dot_bytes,
    ragged_bag_bytes,
    ragged_bag_reference,
    ragged_dot_bytes,
    ragged_dot_reference,
    ragged_gather_bytes,
    ragged_gather_reference,
)
from mixemb.reference.soft_select import (
    block_of,
    blocks_of,
    equal_boundaries,
    fused_update_reference,
    normalize_alpha_grad,
    padded_gather_bytes,
    padded_gather_reference,
    reference_alpha_values_grad,
    reference_forward,
    reference_gather,
    reference_row_grads,
    reference_scale,
    reference_weight_grad,
    soft_select_alpha_grad_bytes,
    soft_select_bag_bytes,
    soft_select_bag_reference,
    soft_select_fused_update_bytes,
    soft_select_lookup_backward_bytes,
    soft_select_lookup_bytes,
    soft_select_lookup_reference,
    soft_select_weight_grad_bytes,
    stochastic_round,
)

__all__ = [
    "block_gather_bytes",
    "block_gather_reference",
    "block_of",
    "blocks_of",
    "equal_boundaries",
    "fused_update_reference",
    "normalize_alpha_grad",
    "padded_bag_bytes",
    "padded_dot_bytes",
    "padded_gather_bytes",
    "padded_gather_reference",
    "ragged_bag_bytes",
    "ragged_bag_reference",
    "ragged_dot_bytes",
    "ragged_dot_reference",
    "ragged_gather_bytes",
    "ragged_gather_reference",
    "reference_alpha_values_grad",
    "reference_forward",
    "reference_gather",
    "reference_row_grads",
    "reference_scale",
    "reference_weight_grad",
    "soft_select_alpha_grad_bytes",
    "soft_select_bag_bytes",
    "soft_select_bag_reference",
    "soft_select_fused_update_bytes",
    "soft_select_lookup_backward_bytes",
    "soft_select_lookup_bytes",
    "soft_select_lookup_reference",
    "soft_select_weight_grad_bytes",
    "stochastic_round",
]
