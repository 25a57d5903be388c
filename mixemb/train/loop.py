"""The one epoch loop behind :func:`mixemb.train.fit` and :func:`mixemb.search.search`.

Per epoch: a train pass over a seeded batch order (the caller's :class:`EpochHooks` does
the optimizer steps), the validation metric, best-state tracking, early stopping with
patience, a history row, an atomic checkpoint, then the log line (a logged epoch is a saved
one). A loss or validation metric that turns nan or inf stops the run with
:class:`TrainingDiverged` before that epoch is saved; the check reads the figures the epoch
already brought to the host, so it adds no device sync. A run resumed from its checkpoint
(model, the hooks' optimizers, the global torch RNG state) equals the uninterrupted run bit
for bit on the same machine.
"""

from __future__ import annotations

import abc
import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mixemb.data.schema import Dataset, Split
from mixemb.metrics import compute_metrics, primary_metric
from mixemb.train.checkpoint import CheckpointError, atomic_save, load_checkpoint
from mixemb.train.progress import Progress


def batch_order(num_rows: int, batch_size: int, seed: int, epoch: int) -> Iterator[torch.Tensor]:
    """Yield int64 index tensors covering a seeded permutation of ``range(num_rows)``."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(num_rows, generator=gen)
    for start in range(0, num_rows, batch_size):
        yield perm[start : start + batch_size]


def split_batch(split: Split, index: torch.Tensor | slice, device: torch.device):
    """Rows ``index`` of a split as (ids int64, values float32 | None, labels float32) on device."""
    ids = split.ids[index].to(device=device, dtype=torch.long, non_blocking=True)
    values = None if split.values is None else split.values[index].to(device)
    labels = split.labels[index].to(device=device, dtype=torch.float32)
    return ids, values, labels


def optimizer_step(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    split: Split,
    index: torch.Tensor,
    device: torch.device,
) -> torch.Tensor:
    """One step of ``optimizer`` on the loss of rows ``index`` of ``split``; returns the
    loss, a 0-d float32 tensor on ``device`` (not synced to the host)."""
    ids, values, labels = split_batch(split, index, device)
    loss = loss_fn(model(ids, values), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss


@torch.no_grad()
def predict(model: nn.Module, split: Split, batch_size: int = 65536, device="cpu") -> torch.Tensor:
    """Model scores (n,) float32 on CPU for every row of ``split``, in order."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(split), batch_size):
        ids, values, _ = split_batch(split, slice(start, start + batch_size), device)
        out.append(model(ids, values).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def evaluate(
    model: nn.Module, split: Split, task: str, *, k: int = 10, batch_size: int = 65536, device="cpu"
) -> dict[str, float]:
    """Task metrics of ``model`` on ``split`` (see :func:`mixemb.metrics.compute_metrics`)."""
    scores = predict(model, split, batch_size, device)
    return compute_metrics(task, scores, split.labels.float(), group_size=split.group_size, k=k)


class EpochHooks(abc.ABC):
    """What a training procedure plugs into :func:`run_epochs`: ``step`` is its own, the
    other hooks default to doing nothing.

    Called per epoch in this order: ``begin_epoch``, ``step`` once per training batch,
    ``end_epoch``, the validation pass, ``after_validation``.
    """

    def begin_epoch(self, epoch: int) -> None:
        """Before the first batch of ``epoch`` (0-based)."""
        return None

    @abc.abstractmethod
    def step(self, train: Split, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """Train on rows ``index`` (int64) of ``train``; returns 0-d losses for the progress
        bar (read only when the bar is drawn, so no host sync otherwise)."""

    def end_epoch(self, steps: int) -> dict[str, float]:
        """After the last of ``steps`` batches; returns the history row's training figures."""
        return {}

    def after_validation(self, value: float) -> dict[str, Any]:
        """After the validation metric ``value`` is known; returns extra history fields."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Extra resume state (optimizers, schedulers) stored in the checkpoint."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` stored (``state`` is the whole checkpoint)."""
        return None


@dataclass
class LoopResult:
    """best_epoch: 1-based epoch of the best validation metric (0: none ran); valid: its
    validation metrics, measured again after the best state is restored."""

    best_epoch: int
    valid: dict[str, float]
    history: list[dict] = field(default_factory=list)
    stopped_early: bool = False
    seconds: float = 0.0


def load_resume_state(path: Path, kind: str, config: Any) -> dict:
    """The checkpoint at ``path`` of ``kind``, refused when saved with another ``config``.
    A setting the checkpoint predates reads as its default."""
    state = load_checkpoint(path, kind=kind)
    defaults = {f.name: f.default for f in fields(config) if f.default is not MISSING}
    saved = {**defaults, **state["config"]}
    if saved != asdict(config):
        diff = {k: (saved.get(k), v) for k, v in asdict(config).items() if saved.get(k) != v}
        raise CheckpointError(
            f"{path}: saved with a different configuration (saved, requested): {diff}"
        )
    if "bad" in state:  # search_last.pt files counting patience in "bad", best_epoch from 1
        state = {**state, "bad_epochs": state["bad"], "best_epoch": state["best_epoch"] - 1}
    return state


class TrainingDiverged(ValueError):
    """A loss or the validation metric turned non-finite; the epoch was not saved."""


def stop_if_not_finite(where: str, figures: dict[str, Any]) -> None:
    """Raise TrainingDiverged when a float in ``figures`` (host numbers) is nan or inf."""
    for name, value in figures.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise TrainingDiverged(
                f"{where}: {name} is {value}; training diverged (lower the learning rate or "
                "check the data for extreme values); this epoch was not saved"
            )


def _format_row(label: str, row: dict, improved: bool) -> str:
    parts = [f"{label} {row['epoch']:3d}"]
    for key, value in row.items():
        if key in ("epoch", "seconds"):
            continue
        if isinstance(value, list):
            parts.append(key + " " + " ".join(f"{v:.2f}" for v in value))
        else:
            parts.append(f"{key} {value:.4f}")
    parts.append(f"{row['seconds']:.1f}s")
    return "  ".join(parts) + ("  *" if improved else "")


def run_epochs(
    model: nn.Module,
    dataset: Dataset,
    config: Any,
    hooks: EpochHooks,
    *,
    epochs: int,
    label: str,
    kind: str,
    last_path: Path | None = None,
    state: dict | None = None,
    best_path: Path | None = None,
    best_extra: dict | None = None,
    log: Callable[[str], None] = print,
    progress: bool | None = None,
) -> LoopResult:
    """Train ``model`` for up to ``epochs`` epochs with early stopping on ``dataset.valid``.

    config: a dataclass with ``seed``, ``batch_size``, ``patience``, ``k``,
        ``eval_batch_size`` and ``device`` (saved in the checkpoint with ``asdict``).
    label: names the epochs in the progress bar and the log ("epoch", "search").
    kind: the checkpoint's ``"kind"``; ``last_path`` is written after every epoch.
    state: a checkpoint from :func:`load_resume_state` to continue from.
    best_path: when given, the best model is written there (kind "mixemb.model", with
        ``best_extra``) whenever the validation metric improves.
    Leaves ``model`` in its best-on-validation state.
    """
    device = torch.device(config.device)
    task = dataset.task
    metric_name, direction = primary_metric(task, config.k)
    start, best, best_epoch, bad, history, best_state = 0, None, -1, 0, [], None
    if state is not None:
        model.load_state_dict(state["model"])
        hooks.load_state_dict(state)
        start, best, best_epoch = state["epoch"] + 1, state["best"], state["best_epoch"]
        bad, history, best_state = state["bad_epochs"], state["history"], state["best_model"]
        torch.set_rng_state(state["rng"])
        log(f"resumed from {last_path}: {start} epoch(s) done, continuing with epoch {start + 1}")

    t0 = time.perf_counter()
    stopped = bad > config.patience
    for epoch in range(start, epochs):
        if stopped:
            break
        model.train()
        train = dataset.train_for_epoch(epoch)
        hooks.begin_epoch(epoch)
        steps = math.ceil(len(train) / config.batch_size)
        t_epoch = time.perf_counter()
        with Progress(steps, f"{label} {epoch + 1}/{epochs}", enabled=progress) as bar:
            for index in batch_order(len(train), config.batch_size, config.seed, epoch):
                losses = hooks.step(train, index)
                if bar.enabled:
                    bar.update(1, **{k: float(v) for k, v in losses.items()})
        train_row = hooks.end_epoch(steps)  # the epoch's losses, synced once here
        valid = evaluate(
            model, dataset.valid, task, k=config.k, batch_size=config.eval_batch_size, device=device
        )
        value = valid[metric_name]
        stop_if_not_finite(f"{label} {epoch + 1}", {**train_row, f"valid {metric_name}": value})
        improved = best is None or (value < best if direction == "min" else value > best)
        if improved:
            best, best_epoch, bad = value, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad += 1
        extra = hooks.after_validation(value)
        row = {
            "epoch": epoch + 1,
            **train_row,
            **{f"valid_{k}": v for k, v in valid.items()},
            **extra,
            "seconds": time.perf_counter() - t_epoch,
        }
        history.append(row)
        stopped = bad > config.patience
        if best_path is not None and improved:
            atomic_save(
                {
                    "kind": "mixemb.model",
                    "model": best_state,
                    "epoch": epoch + 1,
                    "valid": valid,
                    "train_config": asdict(config),
                    **(best_extra or {}),
                },
                best_path,
            )
        if last_path is not None:
            atomic_save(
                {
                    "kind": kind,
                    "config": asdict(config),
                    "model": model.state_dict(),
                    **hooks.state_dict(),
                    "epoch": epoch,
                    "best": best,
                    "best_epoch": best_epoch,
                    "bad_epochs": bad,
                    "history": history,
                    "best_model": best_state,
                    "rng": torch.get_rng_state(),
                },
                last_path,
            )
        log(_format_row(label, row, improved))  # after the checkpoints: a logged epoch is saved
        if stopped:
            log(f"early stop: no better valid {metric_name} for {bad} epochs")

    if best_state is not None:
        model.load_state_dict(best_state)
    valid = evaluate(
        model, dataset.valid, task, k=config.k, batch_size=config.eval_batch_size, device=device
    )
    return LoopResult(
        best_epoch=best_epoch + 1,
        valid=valid,
        history=history,
        stopped_early=stopped,
        seconds=time.perf_counter() - t0,
    )
