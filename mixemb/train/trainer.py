"""Plain training and evaluation of a latent factor model (the uniform-dimension baseline).

``fit`` trains with Adam, evaluates on the validation split after every epoch, stops
early on the validation metric, writes atomic checkpoints every epoch (``last.pt``
to resume, ``best.pt`` for the best-on-validation model) and resumes after a kill to
exactly the run it would have been. The test split is only ever *reported*.

The epochs run in :func:`mixemb.train.loop.run_epochs`; this module supplies the Adam
step. Determinism: the batch order of epoch ``e`` comes from a generator seeded with
``(seed, e)`` and the global torch RNG state (dropout) is checkpointed, so a resumed
run equals an uninterrupted one bit for bit on the same machine.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mixemb.data.schema import Dataset, Split
from mixemb.train.checkpoint import check_writable
from mixemb.train.loop import (
    EpochHooks,
    evaluate,
    load_resume_state,
    optimizer_step,
    run_epochs,
)

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
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay}")


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


class _AdamSteps(EpochHooks):
    """The plain trainer's step: Adam on every parameter, loss averaged over rows."""

    def __init__(self, model: nn.Module, loss_fn, optimizer: torch.optim.Optimizer, device):
        self.model, self.loss_fn, self.optimizer, self.device = model, loss_fn, optimizer, device
        self.total, self.seen = 0.0, 0

    def begin_epoch(self, epoch: int) -> None:
        self.total, self.seen = 0.0, 0

    def step(self, train: Split, index: torch.Tensor) -> dict[str, torch.Tensor]:
        loss = optimizer_step(self.model, self.loss_fn, self.optimizer, train, index, self.device)
        # The sum is kept on the device: no host sync per step.
        self.total = self.total + loss.detach() * len(index)
        self.seen += len(index)
        return {"loss": loss}

    def end_epoch(self, steps: int) -> dict[str, float]:
        return {"train_loss": float(self.total) / max(self.seen, 1)}

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])


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
        Without a ``last.pt`` yet (killed in the first epoch) the run starts fresh.
    extra_state: JSON/tensor-only dict stored in ``best.pt`` (model config, encoder, the
        dataset spec) so ``mixemb evaluate`` can rebuild and score the model.
    progress: show a per-batch progress bar (default: when stderr is a terminal).
    """
    device = torch.device(config.device)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    hooks = _AdamSteps(model, loss_function(dataset.task), optimizer, device)
    run_dir = Path(run_dir) if run_dir is not None else None
    if resume and run_dir is None:
        raise ValueError("resume=True needs a run_dir")
    if run_dir is not None:
        check_writable(run_dir)
    state = None
    if resume and (run_dir / "last.pt").exists():
        state = load_resume_state(run_dir / "last.pt", CHECKPOINT_KIND, config)
    else:  # a fresh run, or one killed before its first checkpoint (as search does)
        if resume:
            log(f"no checkpoint in {run_dir} yet: starting fresh")
        init_output_bias(model, dataset.task, dataset.train.labels)
    t0 = time.perf_counter()
    loop = run_epochs(
        model,
        dataset,
        config,
        hooks,
        epochs=config.epochs,
        label="epoch",
        kind=CHECKPOINT_KIND,
        last_path=None if run_dir is None else run_dir / "last.pt",
        state=state,
        best_path=None if run_dir is None else run_dir / "best.pt",
        best_extra=extra_state,
        log=log,
        progress=progress,
    )
    test = evaluate(
        model,
        dataset.test,
        dataset.task,
        k=config.k,
        batch_size=config.eval_batch_size,
        device=device,
    )
    return TrainResult(
        best_epoch=loop.best_epoch,
        valid=loop.valid,
        test=test,
        history=loop.history,
        seconds=time.perf_counter() - t0,
        stopped_early=loop.stopped_early,
    )
