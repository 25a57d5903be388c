"""DNIS search: warm start, then alternate a weights step (train batch) and an α step
(validation batch), first-order.

* warm start — all parameters train with α fixed at 1 (the plain trainer, best-on-
  validation epoch kept);
* weights step — Adam on the embedding table and the first-order terms (dense layers
  frozen unless ``train_dense``) on one training batch;
* α step — SGD on α with the gradient normalized per block row (inside the op), L1 term
  λ·Σ|α| added before normalization, then α clamped to [0, 1], on one validation batch
  (the validation loader is cycled when it is shorter);
* validation metric after every epoch: ReduceLROnPlateau on the α learning rate, early
  stopping; the best-on-validation state is kept. The test split is never looked at.

The epochs run in the trainer's loop (:func:`mixemb.train.run_epochs`): this module
supplies the alternating steps (a :class:`~mixemb.search.any_model.DnisStep`, the step
:func:`mixemb.dnis` takes on any model), the plateau schedule and their checkpoint state, so
``search`` checkpoints atomically after every epoch and resumes to the same result.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from mixemb.data.schema import Dataset, Split
from mixemb.metrics import primary_metric
from mixemb.models import build_model
from mixemb.nn import SoftSelectEmbedding
from mixemb.search.any_model import DnisStep
from mixemb.train import EpochHooks, TrainConfig, batch_order, config_from, fit, run_epochs
from mixemb.train.checkpoint import check_writable
from mixemb.train.loop import load_resume_state, split_batch
from mixemb.train.trainer import init_output_bias, loss_function

CHECKPOINT_KIND = "mixemb.search"


@dataclass
class SearchConfig:
    """Hyper-parameters of :func:`search` (JSON-able, saved in checkpoints).

    dim: maximum embedding dimension K (default 64).
    num_blocks: L equal frequency blocks (default 10, the authors' MovieLens choice).
    warmup_epochs: warm-start epochs with α = 1 (best-on-validation kept; 0 skips).
    search_epochs: maximum alternating epochs.
    batch_size: rows per weights step and per α step.
    lr: Adam learning rate of the weights steps (and of the warm start).
    alpha_lr: SGD learning rate of α (1e-2; the authors use 1e-3 on small data).
    l1: λ of the L1 term on α (1e-5).
    eps: gradient normalization's stabilizer (1e-8).
    normalize: per-block-row gradient normalization on α (the DNIS default; off = ablation).
    train_dense: also update dense layers in weights steps (authors: frozen).
    patience: epochs without validation gain before stopping (and for the LR plateau).
    alpha_split: 0 (the paper): α steps on validation batches; f in (0, 1): on a random
        fraction f of the training rows, held out of the table's training (warm start
        included), so the validation split only scores (:meth:`Dataset.hold_out`).
    seed, k, device, eval_batch_size: as in :class:`mixemb.train.TrainConfig`.
    """

    dim: int = 64
    num_blocks: int = 10
    warmup_epochs: int = 2
    search_epochs: int = 10
    batch_size: int = 1024
    lr: float = 1e-3
    alpha_lr: float = 1e-2
    l1: float = 1e-5
    eps: float = 1e-8
    normalize: bool = True
    train_dense: bool = False
    patience: int = 2
    alpha_split: float = 0.0
    seed: int = 0
    k: int = 10
    device: str = "cpu"
    eval_batch_size: int = 65536

    def __post_init__(self) -> None:
        for name in ("dim", "num_blocks", "batch_size", "eval_batch_size", "k"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_epochs", "search_epochs", "patience"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name, positive in (("lr", True), ("alpha_lr", True), ("l1", False), ("eps", False)):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0 or (positive and value == 0):
                bound = "> 0" if positive else ">= 0"
                raise ValueError(f"{name} must be a finite number {bound}, got {value}")
        if not 0 <= self.alpha_split < 1:  # also refuses nan
            raise ValueError(f"alpha_split must be in [0, 1), got {self.alpha_split}")

    def warmup_config(self) -> TrainConfig:
        """The warm start's :class:`TrainConfig`: the shared fields, at least one epoch."""
        return config_from(TrainConfig, self, epochs=max(self.warmup_epochs, 1))


@dataclass
class SearchResult:
    """Best epoch, its validation metrics, per-epoch history, wall time of each phase."""

    best_epoch: int
    valid: dict[str, float]
    history: list[dict] = field(default_factory=list)
    warmup_seconds: float = 0.0
    search_seconds: float = 0.0


def build_search_model(
    dataset: Dataset, model_name: str, config: SearchConfig, **model_kwargs
) -> nn.Module:
    """A model on a :class:`SoftSelectEmbedding` over the dataset's α blocks
    (:meth:`Dataset.block_boundaries`)."""
    torch.manual_seed(config.seed)
    boundaries = dataset.block_boundaries(config.num_blocks)
    emb = SoftSelectEmbedding(
        dataset.num_features,
        config.dim,
        boundaries,
        normalize=config.normalize,
        l1=config.l1,
        eps=config.eps,
    )
    return build_model(
        model_name,
        dataset.num_features,
        dataset.num_fields,
        config.dim,
        embedding=emb,
        **model_kwargs,
    )


def alpha_stats(alpha: torch.Tensor) -> list[dict[str, float]]:
    """Per block row of α: mean, min, and the fraction of entries below 0.1."""
    a = alpha.detach().float().cpu()
    return [
        {
            "mean": float(r.mean()),
            "min": float(r.min()),
            "frac_below_0.1": float((r < 0.1).float().mean()),
        }
        for r in a
    ]


class _AlternatingSteps(EpochHooks):
    """Per training batch a :class:`DnisStep` — a weights step, then an α step on the next
    validation batch, or held-out training batch with ``alpha_rows`` (that order is cycled,
    reseeded, when it runs out);
    ReduceLROnPlateau on the α learning rate after each validation pass."""

    def __init__(
        self,
        model: nn.Module,
        dataset: Dataset,
        config: SearchConfig,
        direction: str,
        alpha_rows: Split | None = None,
    ):
        self.model, self.alpha, self.config = model, model.embedding.alpha, config
        # α's batches: the validation split, or the training rows held out for it
        self.alpha_data = dataset.valid if alpha_rows is None else alpha_rows
        self.device = torch.device(config.device)
        # the table and the first-order terms (and the dense layers with train_dense); the
        # other parameters stay frozen in both steps
        params = [model.embedding.weight] + model.first_order_parameters()
        if config.train_dense:
            params += model.dense_parameters()
        self.dnis = DnisStep(
            model,
            loss_function(dataset.task),
            lr=config.lr,
            alpha_lr=config.alpha_lr,
            l1=config.l1,
            params=params,
        )
        self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.dnis.opt_a, mode=direction, factor=0.5, patience=max(config.patience - 1, 0)
        )

    def _alpha_order(self, epoch: int):
        return batch_order(
            len(self.alpha_data), self.config.batch_size, self.config.seed + 7919, epoch
        )

    def begin_epoch(self, epoch: int) -> None:
        self.epoch, self.alpha_order = epoch, self._alpha_order(epoch)
        self.total_w = self.total_a = 0.0

    def step(self, train: Split, index: torch.Tensor) -> dict[str, torch.Tensor]:
        a_index = next(self.alpha_order, None)
        if a_index is None:
            self.alpha_order = self._alpha_order(self.epoch + 10**6)
            a_index = next(self.alpha_order)
        loss, v_loss = self.dnis.step(
            self._batch(train, index, self.device),
            self._batch(self.alpha_data, a_index, self.device),
        )
        self.total_w = self.total_w + loss
        self.total_a = self.total_a + v_loss
        return {"loss": loss, "val_loss": v_loss}

    @staticmethod
    def _batch(split: Split, index: torch.Tensor, device: torch.device):
        """Rows ``index`` of ``split`` as a DnisStep batch: ((ids, values), labels)."""
        ids, values, labels = split_batch(split, index, device)
        return (ids, values), labels

    def end_epoch(self, steps: int) -> dict[str, float]:
        return {
            "train_loss": float(self.total_w) / steps,
            "alpha_step_loss": float(self.total_a) / steps,
        }

    def after_validation(self, value: float) -> dict:
        self.plateau.step(value)
        return {
            "alpha_lr": self.dnis.opt_a.param_groups[0]["lr"],
            "alpha_mean": [s["mean"] for s in alpha_stats(self.alpha)],
        }

    def state_dict(self) -> dict:
        return {**self.dnis.state_dict(), "plateau": self.plateau.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.dnis.load_state_dict(state)
        self.plateau.load_state_dict(state["plateau"])


def search(
    model: nn.Module,
    dataset: Dataset,
    config: SearchConfig,
    *,
    log: Callable[[str], None] = print,
    progress: bool | None = None,
    run_dir: str | Path | None = None,
    resume: bool = False,
    init_bias: bool = True,
) -> SearchResult:
    """Run the DNIS search on ``model`` (whose ``embedding`` is a SoftSelectEmbedding).

    run_dir: ``warmup/`` (the plain trainer's checkpoints) and ``search_last.pt`` are
        written there atomically; ``resume`` continues an interrupted search.
    init_bias: with ``warmup_epochs=0``, start the global bias at the label mean; pass
        False when ``model`` was already warm-started elsewhere (one warm start shared by
        several searches, as in ``experiments/dnis_ablation.py``).
    Leaves ``model`` in its best-on-validation state.
    """
    emb = model.embedding
    if not isinstance(emb, SoftSelectEmbedding):
        raise TypeError(f"search needs a SoftSelectEmbedding, got {type(emb).__name__}")
    model.to(torch.device(config.device))
    run_dir = Path(run_dir) if run_dir is not None else None
    if run_dir is not None:
        check_writable(run_dir)
    last_path = None if run_dir is None else run_dir / "search_last.pt"

    alpha_rows = None
    if config.alpha_split:  # α's rows leave the table's training, warm start included
        dataset, alpha_rows = dataset.hold_out(config.alpha_split, config.seed)

    # ---- warm start: α fixed at 1 -----------------------------------------------------
    t0 = time.perf_counter()
    emb.alpha.requires_grad_(False)
    state = None
    if resume and last_path is not None and last_path.exists():
        state = load_resume_state(last_path, CHECKPOINT_KIND, config)
    if config.warmup_epochs and state is None:
        warm_dir = run_dir / "warmup" if run_dir is not None else None
        warm_resume = resume and warm_dir is not None and (warm_dir / "last.pt").exists()
        fit(
            model,
            dataset,
            config.warmup_config(),
            run_dir=warm_dir,
            resume=warm_resume,
            log=lambda s: log("warmup " + s),
            progress=progress,
        )
    warmup_seconds = time.perf_counter() - t0

    # ---- alternating search ------------------------------------------------------------
    _, direction = primary_metric(dataset.task, config.k)
    hooks = _AlternatingSteps(model, dataset, config, direction, alpha_rows)
    t1 = time.perf_counter()
    if state is None and config.warmup_epochs == 0 and init_bias:
        init_output_bias(model, dataset.task, dataset.train.labels)
    loop = run_epochs(
        model,
        dataset,
        config,
        hooks=hooks,
        label="search",
        epochs=config.search_epochs,
        kind=CHECKPOINT_KIND,
        last_path=last_path,
        state=state,
        log=log,
        progress=progress,
    )
    for p in model.parameters():
        p.requires_grad_(True)
    return SearchResult(
        best_epoch=loop.best_epoch,
        valid=loop.valid,
        history=loop.history,
        warmup_seconds=warmup_seconds,
        search_seconds=time.perf_counter() - t1,
    )
