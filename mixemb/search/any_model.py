"""DNIS on any PyTorch model made searchable by :func:`mixemb.nn.searchable.searchable`.

The model's ``nn.Embedding`` / ``nn.EmbeddingBag`` modules were swapped for soft-select
twins, each with its own α (L, K). The search alternates, per training batch:

* a weights step — Adam on every parameter except the twins' α (α frozen) on the
  training batch;
* an α step — SGD on α only (every other parameter frozen) on the next validation batch
  (``valid_data`` is cycled when it runs out); the op adds λ·sign(α) to α's gradient and
  normalizes it per block row; then α is clamped to [0, 1].

Optional warm-up epochs first train every parameter except α (α held at its value).
After every epoch the mean validation loss is measured; the best search epoch's state is
kept, the run stops early after ``patience`` epochs without improvement, and the model
ends in its best state. :class:`DnisStep` is the alternating step on its own, for users
with their own loop; :func:`dnis` runs its epochs with it. Both run data-parallel across
the ranks of the torch.distributed process group passed as ``process_group`` (and only
then: None is one process, even under torchrun; see ``mixemb.search.distributed``).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

import mixemb.search.distributed as dp
from mixemb.nn.searchable import searchable_modules
from mixemb.search.batches import LossFn, batch_loss, check_data, cycle, unpack
from mixemb.train.checkpoint import CheckpointError, atomic_save, check_writable, load_checkpoint
from mixemb.train.loop import stop_if_not_finite
from mixemb.train.progress import Progress

CHECKPOINT_KIND = "mixemb.dnis"


@contextmanager
def _trainable(on: list[nn.Parameter], off: list[nn.Parameter]):
    """Within the block only ``on`` requires grad (``off`` does not); flags restored after."""
    saved = [(p, p.requires_grad) for p in on + off]
    for p in off:
        p.requires_grad_(False)
    for p in on:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


def _check_rate(name: str, value: float, *, positive: bool = True) -> None:
    """A one-line ValueError unless ``value`` is a finite number > 0 (>= 0: ``positive``
    False)."""
    ok = isinstance(value, (int, float)) and math.isfinite(value)
    if not (ok and (value > 0 if positive else value >= 0)):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")


def _twins_of(model: nn.Module) -> dict[str, nn.Module]:
    twins = searchable_modules(model)
    if not twins:
        raise ValueError(
            f"model ({type(model).__name__}) has no searchable embedding; "
            "call mixemb.searchable(model) first"
        )
    return twins


class DnisStep:
    """The DNIS alternating step: ``step(train_batch, valid_batch) -> (loss, valid_loss)``.

    model: a module holding searchable twins; loss_fn(output, target) -> 0-d tensor.
    A batch is ``(inputs, target)``: ``inputs`` a tuple (or list) of positional arguments
    to ``model`` or one tensor; tensors in it (and in ``target``) are moved to the device
    of the twins' α.
    lr: Adam learning rate of the weights steps (1e-3).
    alpha_lr: SGD learning rate of α (1e-3).
    l1: λ of the L1 term on α (1e-5); set on every twin (``twin.l1``).
    params: the parameters the weights step trains (default: every parameter of ``model``
        that requires grad, except the twins' α); the others stay frozen in both steps.
    process_group: a torch.distributed group of several ranks to run data-parallel over
        (``torch.distributed.group.WORLD`` for the default one); None (the default): one
        process, whether or not a default group is initialized. With a group the
        constructor copies rank 0's parameters and buffers to every rank, and each step
        (called by every rank, on its own batch) averages its gradients over the ranks
        before the optimizer step (α's L1 term and normalization applied to the
        average); a table with a fused optimizer is refused.
    A model wrapped in DistributedDataParallel is refused (pass its ``.module``).
    The returned losses are this rank's, detached 0-d tensors, not synced to the host.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        *,
        lr: float = 1e-3,
        alpha_lr: float = 1e-3,
        l1: float = 1e-5,
        params: Iterable[nn.Parameter] | None = None,
        process_group: dist.ProcessGroup | None = None,
    ) -> None:
        twins = _twins_of(model)
        dp.check_not_wrapped(model)
        self.group = dp.resolve_group(process_group)
        _check_rate("lr", lr)
        _check_rate("alpha_lr", alpha_lr)
        _check_rate("l1", l1, positive=False)
        self.model, self.loss_fn, self.twins = model, loss_fn, twins
        self.alphas = [t.alpha for t in twins.values()]
        alpha_ids = {id(a) for a in self.alphas}
        if params is None:
            params = [p for p in model.parameters() if p.requires_grad and id(p) not in alpha_ids]
        else:
            params = list(params)
            if any(id(p) in alpha_ids for p in params):
                raise ValueError("params must not include a searchable twin's alpha")
        if not params:
            raise ValueError("model has no trainable parameter besides the twins' alpha")
        param_ids = {id(p) for p in params}
        self.params = params
        # the other parameters: frozen in the weights step (α among them) and the α step
        self.rest_w = [p for p in model.parameters() if id(p) not in param_ids]
        self.rest_a = [p for p in model.parameters() if id(p) not in alpha_ids]
        if self.group is not None:
            dp.check_no_fused_optimizer(model)
            dp.broadcast_state(model, self.group)
            self.names = {id(p): name for name, p in model.named_parameters()}
        for twin in twins.values():
            twin.l1 = float(l1)
        device = self.alphas[0].device
        # fused Adam: one kernel per step instead of one per parameter tensor
        fused = device.type in ("cpu", "cuda") and all(
            p.dtype == torch.float32 and p.device == device for p in params
        )
        self.opt_w = torch.optim.Adam(params, lr=lr, fused=fused or None)
        self.opt_a = torch.optim.SGD(self.alphas, lr=alpha_lr)

    @property
    def device(self) -> torch.device:
        return self.alphas[0].device

    def weights_step(self, batch: Any) -> torch.Tensor:
        """One Adam step of the weights (α frozen) on ``batch``; returns its loss."""
        with _trainable(self.params, self.rest_w):
            loss = batch_loss(self.model, self.loss_fn, batch, self.device)
            self.opt_w.zero_grad(set_to_none=True)
            loss.backward()
            if self.group is not None:
                dp.average_grads(self.params, self.group, self.names)
            self.opt_w.step()
        return loss.detach()

    def alpha_step(self, batch: Any) -> torch.Tensor:
        """One SGD step of α (everything else frozen) on ``batch``, then α clamped to
        [0, 1]; returns its loss."""
        average = nullcontext()
        if self.group is not None:
            average = dp.averaged_alpha_grads(self.twins, self.group)
        with _trainable(self.alphas, self.rest_a):
            with average:
                loss = batch_loss(self.model, self.loss_fn, batch, self.device)
                self.opt_a.zero_grad(set_to_none=True)
                loss.backward()
            self.opt_a.step()
        with torch.no_grad():
            for alpha in self.alphas:
                alpha.clamp_(0.0, 1.0)
        return loss.detach()

    def step(self, train_batch: Any, valid_batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """A weights step on ``train_batch``, then an α step on ``valid_batch``."""
        return self.weights_step(train_batch), self.alpha_step(valid_batch)

    def state_dict(self) -> dict[str, Any]:
        """Both optimizers' states."""
        return {"opt_w": self.opt_w.state_dict(), "opt_a": self.opt_a.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt_w.load_state_dict(state["opt_w"])
        self.opt_a.load_state_dict(state["opt_a"])


@torch.no_grad()
def count_ids(
    model: nn.Module, data: Iterable, *, device: torch.device | str | None = None
) -> tuple[dict[str, torch.Tensor], int]:
    """How often each id reaches each searchable twin in one pass over ``data``.

    Runs ``model`` (eval mode, no grad) on the inputs of every ``(inputs, target)`` batch;
    a forward pre-hook on each twin counts the ids of its ``input`` argument (padding ids
    included; ids out of range are left to the twin's own check).
    Returns ({twin name: (N,) int64 counts on the twin's device}, number of batches).
    """
    twins = _twins_of(model)
    device = torch.device(device) if device is not None else next(iter(twins.values())).alpha.device
    counts = {
        name: torch.zeros(t.num_embeddings, dtype=torch.int64, device=t.block_map.device)
        for name, t in twins.items()
    }

    def counter(name: str, n: int):
        def hook(module, args, kwargs):
            ids = (args[0] if args else kwargs["input"]).reshape(-1).long()
            inside = (ids >= 0) & (ids < n)
            counts[name].index_add_(0, ids.clamp(0, n - 1).to(counts[name].device), inside.long())

        return hook

    handles = [
        t.register_forward_pre_hook(counter(name, t.num_embeddings), with_kwargs=True)
        for name, t in twins.items()
    ]
    was_training, batches = model.training, 0
    model.eval()
    try:
        for batch in data:
            inputs, _ = unpack(batch, device)
            model(*inputs)
            batches += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return counts, batches


@dataclass
class DnisResult:
    """best_epoch: 1-based epoch (warm-up epochs counted) of the best validation loss among
    the search epochs; history: one dict per epoch (epoch, phase, train_loss,
    alpha_step_loss, valid_loss, alpha_mean per twin, seconds); seconds: this call's wall
    time; stopped_early: patience ran out."""

    best_epoch: int
    best_valid_loss: float
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    stopped_early: bool = False


@torch.no_grad()
def _valid_loss(model: nn.Module, loss_fn: LossFn, data: Iterable, device, group=None) -> float:
    """Mean of ``loss_fn`` over the batches of ``data`` (eval mode, no grad), over every
    rank's batches of ``group``."""
    was_training = model.training
    model.eval()
    total, batches = torch.zeros((), device=device), 0
    try:
        for batch in data:
            total += batch_loss(model, loss_fn, batch, device).float()
            batches += 1
    finally:
        model.train(was_training)
    if batches == 0:
        raise ValueError("valid_data yielded no batches")
    return dp.means([total], batches, group)[0]


def _train_epoch(step: DnisStep, train_data, valid_data, warmup: bool, bar: Progress) -> dict:
    """One pass over ``train_data``: weights steps only (warm-up) or alternating steps."""
    valid = None if warmup else cycle(valid_data)
    total_w = total_a = torch.zeros((), device=step.device)
    steps = 0
    for batch in train_data:
        if warmup:
            losses = {"loss": step.weights_step(batch)}
        else:
            loss, v_loss = step.step(batch, next(valid))
            losses = {"loss": loss, "valid_loss": v_loss}
            total_a = total_a + v_loss.float()
        total_w = total_w + losses["loss"].float()
        steps += 1
        if bar.enabled:
            bar.update(1, **{k: float(v) for k, v in losses.items()})
    if steps == 0:
        raise ValueError("train_data yielded no batches")
    mean_w, mean_a = dp.means([total_w, total_a], steps, step.group)
    row = {"train_loss": mean_w}
    if not warmup:
        row["alpha_step_loss"] = mean_a
    return row


def _format_row(row: dict, total: int, improved: bool) -> str:
    parts = [f"dnis {row['epoch']:3d}/{total} {row['phase']:6s}"]
    for key in ("train_loss", "alpha_step_loss", "valid_loss"):
        if key in row:
            parts.append(f"{key} {row[key]:.4f}")
    parts.append("alpha " + " ".join(f"{k} {v:.3f}" for k, v in row["alpha_mean"].items()))
    parts.append(f"{row['seconds']:.1f}s")
    return "  ".join(parts) + ("  *" if improved else "")


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """The global RNG states a run draws from (shuffling, dropout): CPU, and the device's."""
    state = {"rng": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["rng"])
    if "cuda_rng" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_rng"], device)


def _resume_state(path: Path, config: dict) -> dict:
    """The checkpoint at ``path``, refused when saved with other settings (``epochs`` may
    differ)."""
    state = load_checkpoint(path, kind=CHECKPOINT_KIND)
    saved = {k: v for k, v in state["config"].items() if k != "epochs"}
    wanted = {k: v for k, v in config.items() if k != "epochs"}
    if saved != wanted:
        keys = sorted(saved.keys() | wanted.keys())
        diff = {k: (saved.get(k), wanted.get(k)) for k in keys if saved.get(k) != wanted.get(k)}
        raise CheckpointError(f"{path}: saved with different settings (saved, requested): {diff}")
    return state


def dnis(
    model: nn.Module,
    train_data: Iterable,
    valid_data: Iterable,
    loss_fn: LossFn,
    *,
    epochs: int = 10,
    warmup_epochs: int = 0,
    lr: float = 1e-3,
    alpha_lr: float = 1e-3,
    l1: float = 1e-5,
    patience: int = 2,
    device: torch.device | str | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    progress: bool | None = None,
    log: Callable[[str], None] = print,
    process_group: dist.ProcessGroup | None = None,
) -> DnisResult:
    """Search the soft selection α of every searchable twin in ``model``.

    train_data, valid_data: re-iterable collections (a list, a DataLoader) of
        ``(inputs, target)`` batches; ``inputs`` a tuple of positional arguments to
        ``model`` or one tensor. loss_fn(output, target) -> 0-d tensor.
    epochs: alternating (search) epochs, at most; warmup_epochs: epochs before them that
        train every parameter except α.
    lr, alpha_lr, l1: see :class:`DnisStep`.
    patience: search epochs without a lower validation loss tolerated; the next one stops
        the run (as in :func:`mixemb.train.fit`).
    device: where to move ``model`` (default: leave it where it is); batches follow it.
    checkpoint: a file written atomically after every epoch; ``resume=True`` continues
        from it (a fresh start when it does not exist yet).
    progress: per-batch progress bar (None: only on a terminal); log: one line an epoch.
    process_group: a group to run data-parallel over (``torch.distributed.group.WORLD``
        for the default one; None: one process, even where a default group is
        initialized; see :class:`DnisStep`). Each rank passes its own shard of
        ``train_data`` (the same number of batches on every rank) and of ``valid_data``;
        losses are averaged over the ranks, so every rank takes the same decisions; id
        counts are summed; only rank 0 logs and writes ``checkpoint`` (on a filesystem
        every rank reads: each resumes from it, with its own RNG state, at the same
        number of ranks).
    A DataLoader's sampler with ``set_epoch`` (DistributedSampler) is told each epoch.
    Twins without frequencies get them from one counting pass over ``train_data``.
    Leaves ``model`` in its best state (the lowest validation loss of a search epoch).
    """
    for name, value, low in (("epochs", epochs, 1), ("warmup_epochs", warmup_epochs, 0)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if not isinstance(patience, int) or patience < 0:
        raise ValueError(f"patience must be an int >= 0, got {patience!r}")
    _check_rate("lr", lr)
    _check_rate("alpha_lr", alpha_lr)
    _check_rate("l1", l1, positive=False)
    check_data("train_data", train_data)
    check_data("valid_data", valid_data)
    if resume and checkpoint is None:
        raise ValueError("resume=True needs a checkpoint path")
    twins = _twins_of(model)
    dp.check_not_wrapped(model)
    group = dp.resolve_group(process_group)
    rank = dp.rank(group)
    if rank != 0:  # rank 0 reports and writes the checkpoint
        log, progress = (lambda line: None), False
    if device is not None:
        model.to(torch.device(device))
    device = next(iter(twins.values())).alpha.device
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and rank == 0:
        check_writable(path.parent)
    config = {
        "epochs": epochs,
        "warmup_epochs": warmup_epochs,
        "lr": lr,
        "alpha_lr": alpha_lr,
        "l1": l1,
        "patience": patience,
    }
    if group is not None:
        config["world_size"] = dist.get_world_size(group)
        dp.check_same_length(train_data, group, device)

    t0 = time.perf_counter()
    resuming = resume and path.is_file()
    if group is not None and resume:  # rank 0's file decides
        resuming = dp.broadcast_flag(resuming, group, device)
    state = _resume_state(path, config) if resuming else None
    if state is not None:
        model.load_state_dict(state["model"])
    # before counting: in a distributed run it copies rank 0's state (frequencies too)
    step = DnisStep(model, loss_fn, lr=lr, alpha_lr=alpha_lr, l1=l1, process_group=group)
    missing = [name for name, t in twins.items() if not bool(t.has_frequencies)]
    if state is None and missing:
        counts, batches = count_ids(model, train_data, device=device)
        if group is not None:
            for name in missing:
                dp.sum_over_ranks(counts[name], group)
            batches = int(dp.sum_over_ranks(torch.tensor(batches, device=device), group))
        for name in missing:
            twins[name].set_frequencies(counts[name])
        log(f"dnis: counted id frequencies of {', '.join(missing)} over {batches} batches")
    # epochs done, the best search epoch's loss, number and state, epochs since, the rows
    record = {"epoch": 0, "best": None, "best_epoch": 0, "bad_epochs": 0, "history": []}
    record["best_model"] = None
    if state is not None:
        step.load_state_dict(state["step"])
        record = {key: state[key] for key in record}
        _set_rng_state(state if group is None else state["rank_rng"][rank], device)
        log(f"dnis: resumed from {path}: {record['epoch']} epoch(s) done")

    total = warmup_epochs + epochs
    try:
        steps = len(train_data)
    except TypeError:
        steps = 0
    was_training = model.training
    stopped = record["bad_epochs"] > patience
    for epoch in range(record["epoch"], total):
        if stopped:
            break
        warmup = epoch < warmup_epochs
        t_epoch = time.perf_counter()
        model.train()
        for data in (train_data, valid_data):
            if hasattr(getattr(data, "sampler", None), "set_epoch"):
                data.sampler.set_epoch(epoch)
        phase = "warmup" if warmup else "search"
        with Progress(steps, f"dnis {phase} {epoch + 1}/{total}", enabled=progress) as bar:
            row = _train_epoch(step, train_data, valid_data, warmup, bar)
        value = _valid_loss(model, loss_fn, valid_data, device, group)
        row = {
            "epoch": epoch + 1,
            "phase": phase,
            **row,
            "valid_loss": value,
            "alpha_mean": {name: float(t.alpha.detach().mean()) for name, t in twins.items()},
            "seconds": time.perf_counter() - t_epoch,
        }
        stop_if_not_finite(f"dnis epoch {epoch + 1}", row)
        improved = not warmup and (record["best"] is None or value < record["best"])
        if improved:
            best_model = copy.deepcopy(model.state_dict())
            record.update(best=value, best_epoch=epoch + 1, bad_epochs=0, best_model=best_model)
        elif not warmup:
            record["bad_epochs"] += 1
        stopped = record["bad_epochs"] > patience
        record["epoch"] = epoch + 1
        record["history"].append(row)
        if path is not None:
            rng = _rng_state(device)
            if group is not None:  # every rank's, each restores its own
                rng = {"rank_rng": dp.gather_objects(rng, group)}
            if rank == 0:
                atomic_save(
                    {
                        "kind": CHECKPOINT_KIND,
                        "config": config,
                        "model": model.state_dict(),
                        "step": step.state_dict(),
                        **record,
                        **rng,
                    },
                    path,
                )
        log(_format_row(row, total, improved))  # after the checkpoint: a logged epoch is saved
        if stopped:
            log(f"dnis: early stop, no lower validation loss for {record['bad_epochs']} epochs")

    if record["best_model"] is not None:
        model.load_state_dict(record["best_model"])
    model.train(was_training)
    return DnisResult(
        best_epoch=record["best_epoch"],
        best_valid_loss=float(record["best"]),
        history=record["history"],
        seconds=time.perf_counter() - t0,
        stopped_early=stopped,
    )
