"""Plain training and evaluation of a latent factor model (the uniform-dimension baseline).

``fit`` trains with Adam, evaluates on the validation split after every epoch, stops
early on the validation metric, writes atomic checkpoints every epoch (``last.pt``
to resume, ``best.pt`` for the best-on-validation model) and resumes after a kill to
exactly the run it would have been. The test split is only ever *reported*.

Determinism: the batch order of epoch ``e`` comes from a generator seeded with
``(seed, e)`` and the global torch RNG state (dropout) is checkpointed, so a resumed
run equals an uninterrupted one bit for bit on the same machine.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mixemb.data.schema import Dataset, Split
from mixemb.metrics import compute_metrics, primary_metric
from mixemb.train.checkpoint import CheckpointError, atomic_save, load_checkpoint
from mixemb.train.progress import Progress

CHECKPOINT_KIND = "mixemb.train"


@dataclass
class TrainConfig:
    """Hyper-parameters of :func:`fit` (all JSON-able; saved in checkpoints).

    epochs: maximum number of epochs (default 30).
    batch_size: training rows per Adam step (default 1024).
    lr: Adam learning rate (default 1e-3, the DNIS authors' warm-start setting).
    weight_decay: L2 penalty applied by Adam to every parameter (default 0).
    patience: stop after this many epochs without a better validation metric (default 3).
    seed: seeds batch order (and, through the caller, the model's initialisation).
    eval_batch_size: rows per forward pass during evaluation.
    k: cut-off of HR@k / NDCG@k for top-k tasks.
    device: "cpu" or "cuda" (or any torch device string).
    """

    epochs: int = 30
    batch_size: int = 1024
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 3
    seed: int = 0
    eval_batch_size: int = 65536
    k: int = 10
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size", "k"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.patience < 0:
            raise ValueError(f"patience must be >= 0, got {self.patience}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")


@dataclass
class TrainResult:
    """What :func:`fit` returns: the best epoch, its validation metrics, per-epoch history,
    the test metrics of the best model (reported, never used for selection) and wall time."""

    best_epoch: int
    valid: dict[str, float]
    test: dict[str, float]
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    stopped_early: bool = False


def batch_order(num_rows: int, batch_size: int, seed: int, epoch: int) -> Iterator[torch.Tensor]:
    """Yield index tensors covering a seeded permutation of ``range(num_rows)``."""
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


def loss_function(task: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """MSE for rating, binary cross-entropy on logits for ctr and top-k."""
    return F.mse_loss if task == "rating" else F.binary_cross_entropy_with_logits


def init_output_bias(model: nn.Module, task: str, labels: torch.Tensor) -> None:
    """Start the global bias at the training mean (rating) or the base-rate logit (binary)."""
    mean = float(labels.double().mean()) if labels.numel() else 0.0
    if task != "rating":
        p = min(max(mean, 1e-6), 1 - 1e-6)
        mean = math.log(p / (1 - p))
    with torch.no_grad():
        model.bias.fill_(mean)


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


def _is_better(value: float, best: float | None, direction: str) -> bool:
    if best is None:
        return True
    return value < best if direction == "min" else value > best


def fit(
    model: nn.Module,
    dataset: Dataset,
    config: TrainConfig,
    *,
    run_dir: str | Path | None = None,
    resume: bool = False,
    extra_state: dict | None = None,
    log: Callable[[str], None] = print,
    progress: bool | None = None,
) -> TrainResult:
    """Train ``model`` on ``dataset.train`` with Adam and early stopping on ``dataset.valid``.

    run_dir: where ``last.pt`` (resume state) and ``best.pt`` (best model) are written
        atomically after every epoch; None trains without checkpoints.
    resume: continue from ``run_dir/last.pt``; the result equals an uninterrupted run.
    extra_state: JSON/tensor-only dict stored in ``best.pt`` (model config, encoder, the
        dataset spec) so ``mixemb evaluate`` can rebuild and score the model.
    progress: show a per-batch progress bar (default: when stderr is a terminal).
    """
    device = torch.device(config.device)
    model.to(device)
    task = dataset.task
    loss_fn = loss_function(task)
    metric_name, direction = primary_metric(task, config.k)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    run_dir = Path(run_dir) if run_dir is not None else None
    start_epoch, best, best_epoch, bad_epochs, history = 0, None, -1, 0, []
    best_state = None
    if resume:
        if run_dir is None:
            raise ValueError("resume=True needs a run_dir")
        state = load_checkpoint(run_dir / "last.pt", kind=CHECKPOINT_KIND)
        if state["config"] != asdict(config):
            diff = {
                k: (state["config"].get(k), v)
                for k, v in asdict(config).items()
                if state["config"].get(k) != v
            }
            raise CheckpointError(
                f"{run_dir / 'last.pt'}: saved with a different configuration "
                f"(saved, requested): {diff}"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = state["epoch"] + 1
        best, best_epoch, bad_epochs = state["best"], state["best_epoch"], state["bad_epochs"]
        history = state["history"]
        best_state = state["best_model"]
        torch.set_rng_state(state["rng"])
        log(f"resumed from {run_dir / 'last.pt'} at epoch {start_epoch}")
    else:
        init_output_bias(model, task, dataset.train.labels)

    t0 = time.perf_counter()
    stopped_early = bad_epochs > config.patience
    for epoch in range(start_epoch, config.epochs):
        if stopped_early:
            break
        model.train()
        train = dataset.train_for_epoch(epoch)
        steps = math.ceil(len(train) / config.batch_size)
        total, seen = 0.0, 0
        t_epoch = time.perf_counter()
        with Progress(steps, f"epoch {epoch + 1}/{config.epochs}", enabled=progress) as bar:
            for index in batch_order(len(train), config.batch_size, config.seed, epoch):
                ids, values, labels = split_batch(train, index, device)
                loss = loss_fn(model(ids, values), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                # The sum is kept on the device: no host sync per step.
                total = total + loss.detach() * len(index)
                seen += len(index)
                if bar.enabled:
                    bar.update(1, loss=float(loss))
        train_loss = float(total) / max(seen, 1)
        valid = evaluate(
            model, dataset.valid, task, k=config.k, batch_size=config.eval_batch_size, device=device
        )
        value = valid[metric_name]
        improved = _is_better(value, best, direction)
        if improved:
            best, best_epoch, bad_epochs = value, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad_epochs += 1
        row = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            **{f"valid_{k}": v for k, v in valid.items()},
            "seconds": time.perf_counter() - t_epoch,
        }
        history.append(row)
        log(
            f"epoch {epoch + 1:3d}  train_loss {train_loss:.4f}  "
            + "  ".join(f"valid_{k} {v:.4f}" for k, v in valid.items())
            + f"  {row['seconds']:.1f}s"
            + ("  *" if improved else "")
        )
        stopped_early = bad_epochs > config.patience
        if run_dir is not None:
            if improved:
                atomic_save(
                    {
                        "kind": "mixemb.model",
                        "model": best_state,
                        "epoch": epoch + 1,
                        "valid": valid,
                        "train_config": asdict(config),
                        **(extra_state or {}),
                    },
                    run_dir / "best.pt",
                )
            atomic_save(
                {
                    "kind": CHECKPOINT_KIND,
                    "config": asdict(config),
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "epoch": epoch,
                    "best": best,
                    "best_epoch": best_epoch,
                    "bad_epochs": bad_epochs,
                    "history": history,
                    "best_model": best_state,
                    "rng": torch.get_rng_state(),
                },
                run_dir / "last.pt",
            )
        if stopped_early:
            log(f"early stop: no better valid {metric_name} for {bad_epochs} epochs")

    if best_state is not None:
        model.load_state_dict(best_state)
    kw = dict(k=config.k, batch_size=config.eval_batch_size, device=device)
    valid = evaluate(model, dataset.valid, task, **kw)
    test = evaluate(model, dataset.test, task, **kw)
    return TrainResult(
        best_epoch=best_epoch + 1,
        valid=valid,
        test=test,
        history=history,
        seconds=time.perf_counter() - t0,
        stopped_early=stopped_early,
    )
