"""Data-parallel DNIS: what :func:`mixemb.dnis` and :class:`mixemb.DnisStep` do across
the ranks of a ``torch.distributed`` process group (gloo on CPU, NCCL on GPU) passed as
their ``process_group``. Only that argument turns it on: with ``process_group=None`` a
search is one process, also where a default group is initialized (a single-process search
inside a torchrun job stays single-process; pass ``torch.distributed.group.WORLD`` to run
over the default group).

Every rank runs the same model on its own shard of the batches. After each backward the
gradients of the parameters that step trains (tables and dense layers in the weights
step, α in the α step) are averaged across the ranks, before the optimizer step; every
rank then takes the same step and holds the same parameters. With a mean-reduced loss
over equal-sized shards, the average is the gradient of the concatenated batch, so the
run equals one process on batches R times larger.

Why not ``DistributedDataParallel``: DDP registers its reduction hooks for the parameters
that require grad when it is built, and DNIS toggles requires_grad every step (tables on,
α off; then the reverse); DDP's reducer waits for the frozen ones and fails on the next
step ("Expected to have finished reduction in the prior iteration"). So the averaging is
one explicit all-reduce per step, and a DDP-wrapped model is refused.

α's gradient is not averaged as the op returns it. The op adds λ·sign(α) and divides each
block row by its mean |g|; averaging per-rank normalized gradients divides each rank's
part by its own scale, which is not the concatenated batch's normalized gradient.
So the α step runs the op with ``normalize=False, l1=0`` (the raw ∂loss/∂α), averages,
then applies ``mixemb.reference.normalize_alpha_grad`` with each twin's own ``l1`` and
``eps``: the big batch's gradient. (A twin called several times per forward: one process
normalizes each call's gradient, ranks normalize their sum.)
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mixemb.reference import normalize_alpha_grad

Group = dist.ProcessGroup


def resolve_group(process_group: Group | None) -> Group | None:
    """The group to average over, or None for a single-process run.

    process_group None: a single-process run, whether or not torch.distributed's default
    group is initialized (data parallelism is asked for, never inferred). A group of one
    rank is a single-process run too.
    """
    if process_group is None:
        return None
    if not isinstance(process_group, Group):
        raise ValueError(
            f"process_group must be a torch.distributed ProcessGroup or None, got {process_group!r}"
        )
    return process_group if dist.get_world_size(process_group) > 1 else None


def check_not_wrapped(model: nn.Module) -> None:
    """ValueError when ``model`` is (or holds) a DistributedDataParallel."""
    for name, module in model.named_modules():
        if isinstance(module, DistributedDataParallel):
            where = f"{name} is" if name else "model is"
            raise ValueError(
                f"{where} wrapped in DistributedDataParallel, whose hooks break on DNIS's "
                "requires_grad toggling: pass the module inside (.module); dnis averages "
                "gradients across ranks itself"
            )


def check_no_fused_optimizer(model: nn.Module) -> None:
    """ValueError naming the first module that updates its table inside the backward
    (``fused_optimizer`` set): its weight has no ``.grad`` to average, so ranks drift."""
    for name, module in model.named_modules():
        if getattr(module, "fused_optimizer", None) is not None:
            raise ValueError(
                f"{name or 'model'} updates its table with a fused optimizer inside the "
                "backward (weight.grad stays None), which a distributed dnis cannot average "
                "across ranks: train it without one"
            )


def rank(group: Group | None) -> int:
    """This process's rank in ``group`` (0 for a single-process run)."""
    return 0 if group is None else dist.get_rank(group)


def broadcast_state(model: nn.Module, group: Group) -> None:
    """Copy rank 0's parameters and buffers into every rank's ``model``, in place."""
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t, group=group, group_src=0)


def sum_over_ranks(t: torch.Tensor, group: Group | None) -> torch.Tensor:
    """``t`` summed over the ranks of ``group``, in place (as is for None); returns it."""
    if group is not None:
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return t


def means(totals: list[torch.Tensor], count: int, group: Group | None) -> list[float]:
    """total / count for each 0-d tensor of ``totals``, totals and count summed over
    ``group``'s ranks (as they are for None)."""
    if group is None:
        return [float(t) / count for t in totals]
    count_t = totals[0].new_tensor(float(count), dtype=torch.float64)
    sums = torch.stack([t.double() for t in totals] + [count_t])
    sum_over_ranks(sums, group)
    return [float(t) / float(sums[-1]) for t in sums[:-1]]


def average_grads(params: list[nn.Parameter], group: Group, names: dict[int, str]) -> None:
    """Replace each parameter's ``.grad`` by its mean over the ranks of ``group``.

    params: the parameters one step trains, the same list on every rank. A gradient that
    is None on some ranks counts as zeros there; None on every rank stays None (the
    optimizer skips it, as it would in one process). One all-reduce per (dtype, device),
    plus one host sync to read which gradients exist. names: id(param) → its name, for
    the error on a sparse gradient (which this dense average does not handle).
    """
    world = dist.get_world_size(group)
    buckets: dict[tuple, list[nn.Parameter]] = defaultdict(list)
    for p in params:
        if p.grad is not None and p.grad.is_sparse:
            raise ValueError(
                f"{names.get(id(p), 'a parameter')} has a sparse gradient; a distributed "
                "dnis averages dense gradients only (make its module sparse=False)"
            )
        buckets[(p.dtype, p.device)].append(p)
    for ps in buckets.values():
        present = [p.grad is not None for p in ps]
        grads = [p.grad.reshape(-1) if p.grad is not None else p.new_zeros(p.numel()) for p in ps]
        flags = torch.tensor(present, dtype=ps[0].dtype, device=ps[0].device)
        flat = torch.cat(grads + [flags])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        flat.div_(world)
        anywhere = (flat[-len(ps) :] > 0).tolist()
        chunks = flat[: -len(ps)].split([p.numel() for p in ps])
        for p, chunk, used in zip(ps, chunks, anywhere):
            if not used:
                continue
            if p.grad is None:
                p.grad = chunk.view_as(p).clone()
            else:
                p.grad.copy_(chunk.view_as(p))


@contextmanager
def averaged_alpha_grads(twins: dict[str, nn.Module], group: Group) -> Iterator[None]:
    """Within the block the twins' op returns α's raw gradient (no L1 term, no
    normalization); after it, each α's gradient is averaged over ``group`` and the twin's
    own L1 term and normalization (``normalize``, ``l1``, ``eps``) are applied to the
    average, as the op would to the gradient of the concatenated batch."""
    settings = {name: (t.normalize, t.l1) for name, t in twins.items()}
    for t in twins.values():
        t.normalize, t.l1 = False, 0.0
    try:
        yield
    finally:
        for name, t in twins.items():
            t.normalize, t.l1 = settings[name]
    names = {id(t.alpha): f"{name}.alpha" for name, t in twins.items()}
    average_grads([t.alpha for t in twins.values()], group, names)
    with torch.no_grad():
        for t in twins.values():
            g = t.alpha.grad
            if g is None:
                continue
            acc = torch.promote_types(g.dtype, torch.float32)  # the op's accumulation dtype
            if t.normalize:
                h = normalize_alpha_grad(g.to(acc), t.alpha.to(acc), t.l1, t.eps)
            else:  # the op with normalize=False adds only the L1 term
                h = g.to(acc) + t.l1 * torch.sign(t.alpha.to(acc))
            g.copy_(h)


def check_same_length(data: Iterable, group: Group, device: torch.device) -> None:
    """ValueError unless ``data`` has the same number of batches on every rank (each
    step is a collective: a rank with fewer batches would leave the others waiting).
    Data without a length is not checked."""
    try:
        n = len(data)
    except TypeError:
        n = -1
    span = torch.tensor([n, -n], dtype=torch.int64, device=device)
    dist.all_reduce(span, op=dist.ReduceOp.MAX, group=group)
    hi, lo = int(span[0]), -int(span[1])
    if hi != lo:
        raise ValueError(
            f"train_data must have the same number of batches on every rank, got {lo} to {hi} "
            "(-1: no length)"
        )


def gather_objects(obj: Any, group: Group) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    out: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(out, obj, group=group)
    return out


def broadcast_flag(flag: bool, group: Group, device: torch.device) -> bool:
    """Rank 0's ``flag``, on every rank."""
    t = torch.tensor([flag], dtype=torch.int64, device=device)
    dist.broadcast(t, group=group, group_src=0)
    return bool(t[0])
