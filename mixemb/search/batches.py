"""What :func:`mixemb.dnis` takes as data: re-iterable collections of ``(inputs, target)``
batches, ``inputs`` a tuple of positional arguments to the model (or one tensor)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

LossFn = Callable[[Any, Any], torch.Tensor]


def to_device(obj: Any, device: torch.device) -> Any:
    """``obj`` with every tensor in it (nested in tuples, lists, dicts) moved to ``device``;
    another object with a ``to(device)`` method (a TorchRec KeyedJaggedTensor) is moved by
    it."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if type(obj) in (tuple, list):
        return type(obj)(to_device(x, device) for x in obj)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    move = getattr(obj, "to", None)
    return move(device) if callable(move) and not isinstance(obj, torch.nn.Module) else obj


def unpack(batch: Any, device: torch.device) -> tuple[tuple, Any]:
    """(positional inputs, target) of an ``(inputs, target)`` batch, on ``device``."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        size = f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else ""
        raise ValueError(
            f"a batch must be an (inputs, target) pair, got a {type(batch).__name__}{size}"
        )
    inputs, target = batch
    inputs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    return to_device(inputs, device), to_device(target, device)


def batch_loss(model: nn.Module, loss_fn: LossFn, batch: Any, device: torch.device):
    """``loss_fn(model(*inputs), target)``, a 0-d tensor on ``device``."""
    inputs, target = unpack(batch, device)
    loss = loss_fn(model(*inputs), target)
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        got = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(f"loss_fn must return a 0-d tensor, got {got}")
    return loss


def check_data(name: str, data: Any) -> None:
    """A one-line ValueError unless ``data`` is a re-iterable, non-empty collection."""
    if not isinstance(data, Iterable):
        raise ValueError(f"{name} must be an iterable of (inputs, target) batches, got {data!r}")
    if isinstance(data, Iterator):
        raise ValueError(
            f"{name} must be re-iterable (a list or DataLoader), got a one-shot "
            f"{type(data).__name__}"
        )
    try:
        empty = len(data) == 0
    except TypeError:  # an iterable without a length (IterableDataset): checked per epoch
        empty = False
    if empty:
        raise ValueError(f"{name} is empty")


def cycle(data: Iterable) -> Iterator:
    """The batches of ``data``, restarted whenever they run out."""
    while True:
        empty = True
        for batch in data:
            empty = False
            yield batch
        if empty:
            raise ValueError("valid_data yielded no batches")
