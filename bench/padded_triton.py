"""A hand-written Triton padded gather, out[i] = weight[ids[i]]: the plain embedding lookup
as one small kernel, a baseline beside ``F.embedding`` and ``torch.compile``'s gather.

Each program copies the rows of BLOCK_M lookups, BLOCK_K columns at a time (about 4K
elements a program, the tiling of ``mixemb.kernels``' gathers). Ids are not checked (no
host sync on the GPU path): an id outside [0, N) reads outside the table.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl


@triton.jit
def _padded_gather_kernel(
    weight_ptr,
    ids_ptr,
    out_ptr,
    num_lookups,
    dim,
    stride_weight,
    stride_out,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    lookups = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    live = lookups < num_lookups
    rows = tl.load(ids_ptr + lookups, mask=live, other=0).to(tl.int64)
    cols = tl.arange(0, BLOCK_K)
    for k0 in range(0, dim, BLOCK_K):
        c = k0 + cols
        mask = live[:, None] & (c < dim)[None, :]
        vals = tl.load(weight_ptr + rows[:, None] * stride_weight + c[None, :], mask=mask)
        tl.store(out_ptr + lookups[:, None] * stride_out + c[None, :], vals, mask=mask)


def _tile(dim: int) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_K): K tiles of at most 128 columns, about 4K elements a program."""
    block_k = min(triton.next_power_of_2(max(dim, 16)), 128)
    return max(16, min(128, 4096 // block_k)), block_k


def padded_gather(
    weight: torch.Tensor, ids: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """weight: (N, K) float with unit column stride; ids: (...) int32/int64 in [0, N) on
    weight's device; out: (..., K) contiguous tensor of weight's dtype to write into, or
    None (allocated). Returns (..., K) = ``F.embedding(ids, weight)``."""
    if weight.dim() != 2 or weight.stride(1) != 1:
        raise ValueError(
            f"weight must be (N, K) with unit column stride, got shape {tuple(weight.shape)} "
            f"strides {weight.stride()}"
        )
    if ids.dtype not in (torch.int32, torch.int64) or ids.device != weight.device:
        raise ValueError(
            f"ids must be int32/int64 on {weight.device}, got {ids.dtype} on {ids.device}"
        )
    dim = weight.shape[1]
    shape = (*ids.shape, dim)
    if out is None:
        out = torch.empty(shape, dtype=weight.dtype, device=weight.device)
    elif (
        out.shape != shape
        or out.dtype != weight.dtype
        or out.device != weight.device
        or not out.is_contiguous()
    ):
        raise ValueError(
            f"out must be a contiguous {shape} {weight.dtype} tensor on {weight.device}, got "
            f"{tuple(out.shape)} {out.dtype} on {out.device}"
        )
    flat = ids.reshape(-1).contiguous()
    num_lookups = flat.numel()
    if num_lookups == 0 or dim == 0:
        return out
    block_m, block_k = _tile(dim)
    grid = (triton.cdiv(num_lookups, block_m),)
    on_device = torch.cuda.device(weight.device) if weight.is_cuda else contextlib.nullcontext()
    with on_device:
        _padded_gather_kernel[grid](
            weight, flat, out, num_lookups, dim, weight.stride(0), dim,
            BLOCK_M=block_m, BLOCK_K=block_k,
        )  # fmt: skip
    return out
