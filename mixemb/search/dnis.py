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

``search`` checkpoints atomically after every epoch and resumes to the same result.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from mixemb.data.schema import Dataset
from mixemb.metrics import primary_metric
from mixemb.models import build_model
from mixemb.nn import SoftSelectEmbedding, make_boundaries
from mixemb.train.checkpoint import CheckpointError, atomic_save, load_checkpoint
from mixemb.train.progress import Progress
from mixemb.train.trainer import (
    TrainConfig,
    batch_order,
    evaluate,
    fit,
    loss_function,
    split_batch,
)

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
        for name in ("lr", "alpha_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")

    def warmup_config(self) -> TrainConfig:
        return TrainConfig(
            epochs=max(self.warmup_epochs, 1),
            batch_size=self.batch_size,
            lr=self.lr,
            patience=self.patience,
            seed=self.seed,
            eval_batch_size=self.eval_batch_size,
            k=self.k,
            device=self.device,
        )


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
    """A model on a :class:`SoftSelectEmbedding` with L equal frequency blocks."""
    torch.manual_seed(config.seed)
    boundaries = make_boundaries(dataset.num_features, num_blocks=config.num_blocks)
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


def search(
    model: nn.Module,
    dataset: Dataset,
    config: SearchConfig,
    *,
    run_dir: str | Path | None = None,
    resume: bool = False,
    log: Callable[[str], None] = print,
    progress: bool | None = None,
    init_bias: bool = True,
) -> SearchResult:
    """Run the DNIS search on ``model`` (whose ``embedding`` is a SoftSelectEmbedding).

    run_dir: ``warmup/`` (the plain trainer's checkpoints) and ``search_last.pt`` are
        written there atomically; ``resume`` continues an interrupted search.
    init_bias: with ``warmup_epochs=0``, start the global bias at the label mean; pass
        False when ``model`` was already warm-started elsewhere (one warm start shared by
        several searches, as in ``scripts/dnis_ablation.py``).
    Leaves ``model`` in its best-on-validation state.
    """
    emb = model.embedding
    if not isinstance(emb, SoftSelectEmbedding):
        raise TypeError(f"search needs a SoftSelectEmbedding, got {type(emb).__name__}")
    device = torch.device(config.device)
    model.to(device)
    task = dataset.task
    loss_fn = loss_function(task)
    metric_name, direction = primary_metric(task, config.k)
    run_dir = Path(run_dir) if run_dir is not None else None

    # ---- warm start: α fixed at 1 -----------------------------------------------------
    t0 = time.perf_counter()
    emb.alpha.requires_grad_(False)
    state = None
    if resume and run_dir is not None and (run_dir / "search_last.pt").exists():
        state = load_checkpoint(run_dir / "search_last.pt", kind=CHECKPOINT_KIND)
        if state["config"] != asdict(config):
            raise CheckpointError(
                f"{run_dir / 'search_last.pt'}: saved with a different search configuration"
            )
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
    weight_params = [emb.weight] + model.first_order_parameters()
    if config.train_dense:
        weight_params += model.dense_parameters()
    frozen = [] if config.train_dense else model.dense_parameters()
    # fused Adam: one kernel per step instead of a dozen (≈0.2 s of a 3.9 s ML-1M epoch)
    fused = device.type in ("cpu", "cuda") and all(p.dtype == torch.float32 for p in weight_params)
    opt_w = torch.optim.Adam(weight_params, lr=config.lr, fused=fused or None)
    opt_a = torch.optim.SGD([emb.alpha], lr=config.alpha_lr)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt_a, mode=direction, factor=0.5, patience=max(config.patience - 1, 0)
    )
    start, best, best_epoch, bad, history = 0, None, 0, 0, []
    best_state = copy.deepcopy(model.state_dict())
    if state is not None:
        model.load_state_dict(state["model"])
        opt_w.load_state_dict(state["opt_w"])
        opt_a.load_state_dict(state["opt_a"])
        plateau.load_state_dict(state["plateau"])
        start, best, best_epoch, bad = (
            state["epoch"] + 1,
            state["best"],
            state["best_epoch"],
            state["bad"],
        )
        history, best_state = state["history"], state["best_model"]
        torch.set_rng_state(state["rng"])
        log(f"resumed search at epoch {start + 1}")
    elif config.warmup_epochs == 0 and init_bias:
        from mixemb.train.trainer import init_output_bias

        init_output_bias(model, task, dataset.train.labels)

    t1 = time.perf_counter()
    stopped = bad > config.patience
    for epoch in range(start, config.search_epochs):
        if stopped:
            break
        model.train()
        train = dataset.train_for_epoch(epoch)
        valid = dataset.valid
        valid_order = batch_order(len(valid), config.batch_size, config.seed + 7919, epoch)
        steps = math.ceil(len(train) / config.batch_size)
        total_w = total_a = 0.0
        t_epoch = time.perf_counter()
        with Progress(steps, f"search {epoch + 1}/{config.search_epochs}", enabled=progress) as bar:
            for p in frozen:  # frozen for the whole epoch; restored after it
                p.requires_grad_(False)
            for index in batch_order(len(train), config.batch_size, config.seed, epoch):
                # weights step on a training batch (α frozen)
                emb.alpha.requires_grad_(False)
                for p in weight_params:
                    p.requires_grad_(True)
                ids, values, labels = split_batch(train, index, device)
                loss = loss_fn(model(ids, values), labels)
                opt_w.zero_grad(set_to_none=True)
                loss.backward()
                opt_w.step()
                total_w = total_w + loss.detach()

                # α step on a validation batch (weights frozen); cycle the validation rows
                v_index = next(valid_order, None)
                if v_index is None:
                    valid_order = batch_order(
                        len(valid), config.batch_size, config.seed + 7919, epoch + 10**6
                    )
                    v_index = next(valid_order)
                for p in weight_params:
                    p.requires_grad_(False)
                emb.alpha.requires_grad_(True)
                ids, values, labels = split_batch(valid, v_index, device)
                v_loss = loss_fn(model(ids, values), labels)
                opt_a.zero_grad(set_to_none=True)
                v_loss.backward()  # the op adds λ·sign(α) and normalizes per block row
                opt_a.step()
                with torch.no_grad():
                    emb.alpha.clamp_(0.0, 1.0)
                total_a = total_a + v_loss.detach()
                if bar.enabled:
                    bar.update(1, loss=float(loss), val_loss=float(v_loss))
        for p in model.parameters():
            p.requires_grad_(True)
        metrics = evaluate(
            model, dataset.valid, task, k=config.k, batch_size=config.eval_batch_size, device=device
        )
        value = metrics[metric_name]
        improved = best is None or (value < best if direction == "min" else value > best)
        if improved:
            best, best_epoch, bad = value, epoch + 1, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad += 1
        plateau.step(value)
        stats = alpha_stats(emb.alpha)
        row = {
            "epoch": epoch + 1,
            "train_loss": float(total_w) / steps,
            "alpha_step_loss": float(total_a) / steps,
            **{f"valid_{k}": v for k, v in metrics.items()},
            "alpha_lr": opt_a.param_groups[0]["lr"],
            "alpha_mean": [s["mean"] for s in stats],
            "seconds": time.perf_counter() - t_epoch,
        }
        history.append(row)
        log(
            f"search {epoch + 1:3d}  train_loss {row['train_loss']:.4f}  "
            f"val_batch_loss {row['alpha_step_loss']:.4f}  "
            + "  ".join(f"valid_{k} {v:.4f}" for k, v in metrics.items())
            + "  α mean/block "
            + " ".join(f"{m:.2f}" for m in row["alpha_mean"])
            + ("  *" if improved else "")
        )
        stopped = bad > config.patience
        if run_dir is not None:
            atomic_save(
                {
                    "kind": CHECKPOINT_KIND,
                    "config": asdict(config),
                    "model": model.state_dict(),
                    "opt_w": opt_w.state_dict(),
                    "opt_a": opt_a.state_dict(),
                    "plateau": plateau.state_dict(),
                    "epoch": epoch,
                    "best": best,
                    "best_epoch": best_epoch,
                    "bad": bad,
                    "history": history,
                    "best_model": best_state,
                    "rng": torch.get_rng_state(),
                },
                run_dir / "search_last.pt",
            )
        if stopped:
            log(f"early stop: no better valid {metric_name} for {bad} epochs")
    for p in model.parameters():
        p.requires_grad_(True)
    model.load_state_dict(best_state)
    valid = evaluate(
        model, dataset.valid, task, k=config.k, batch_size=config.eval_batch_size, device=device
    )
    return SearchResult(
        best_epoch=best_epoch,
        valid=valid,
        history=history,
        warmup_seconds=warmup_seconds,
        search_seconds=time.perf_counter() - t1,
    )
