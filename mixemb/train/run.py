"""A run: dataset spec + model + training config → a folder with checkpoints and results.

``train_run`` is what ``mixemb train`` does; ``load_run``/``evaluate_run`` are what
``mixemb evaluate`` does. ``best.pt`` is self-describing (model config, encoder state,
dataset spec), so a run folder is all that is needed to score it later.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mixemb.data import Dataset, load_dataset
from mixemb.models import build_model
from mixemb.train.checkpoint import CheckpointError, load_checkpoint, write_json
from mixemb.train.trainer import TrainConfig, TrainResult, evaluate, fit


def load_from_spec(spec: dict) -> Dataset:
    """``load_dataset(**spec)``: the spec is the JSON-able dict saved in every run."""
    return load_dataset(**spec)


def train_run(
    spec: dict,
    model_name: str,
    dim: int,
    config: TrainConfig,
    run_dir: str | Path | None,
    *,
    resume: bool = False,
    model_kwargs: dict | None = None,
    dataset: Dataset | None = None,
    log: Callable[[str], None] = print,
    progress: bool | None = None,
) -> tuple[TrainResult, nn.Module, Dataset]:
    """Load the dataset, build a uniform-``dim`` model, train it, write ``result.json``.

    spec: keyword arguments of :func:`mixemb.data.load_dataset` (name, task, seed, ...).
    dataset: an already loaded dataset for ``spec`` (skips loading).
    """
    t0 = time.perf_counter()
    if dataset is None:
        dataset = load_from_spec(spec)
    load_s = time.perf_counter() - t0
    log(
        f"{dataset.name} ({dataset.task}): {len(dataset.train):,} train / "
        f"{len(dataset.valid):,} valid / {len(dataset.test):,} test rows, "
        f"{dataset.num_features:,} features in {dataset.num_fields} fields "
        f"(loaded in {load_s:.1f}s)"
    )
    torch.manual_seed(config.seed)
    model = build_model(
        model_name, dataset.num_features, dataset.num_fields, dim, **(model_kwargs or {})
    )
    log(f"model: {model_name}, dim {dim}, {sum(p.numel() for p in model.parameters()):,} params")
    extra = {
        "model_name": model_name,
        "model_config": model.config,
        "encoder": dataset.encoder.state_dict(),
        "dataset_spec": spec,
    }
    result = fit(
        model,
        dataset,
        config,
        run_dir=run_dir,
        resume=resume,
        extra_state=extra,
        log=log,
        progress=progress,
    )
    if run_dir is not None:
        write_json(
            {
                "dataset": spec,
                "model": model_name,
                "model_config": model.config,
                "train_config": asdict(config),
                "best_epoch": result.best_epoch,
                "valid": result.valid,
                "test": result.test,
                "history": result.history,
                "train_seconds": result.seconds,
                "load_seconds": load_s,
            },
            Path(run_dir) / "result.json",
        )
    return result, model, dataset


def load_run(path: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild the best model of a run folder (or its ``best.pt``); returns (model, checkpoint)."""
    path = Path(path)
    file = path / "best.pt" if path.is_dir() else path
    ckpt = load_checkpoint(file, kind="mixemb.model")
    for key in ("model_name", "model_config", "dataset_spec", "encoder"):
        if key not in ckpt:
            raise CheckpointError(f"{file}: missing {key!r}; not written by mixemb train")
    cfg = dict(ckpt["model_config"])
    name = cfg.pop("name", ckpt["model_name"])
    model = build_model(name, **cfg)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{file}: weights do not fit the saved model config: {exc}") from exc
    model.eval()
    return model, ckpt


def evaluate_run(
    path: str | Path, split: str = "test", *, k: int | None = None, device: str = "cpu"
) -> dict[str, float]:
    """Metrics on ``split`` ("train", "valid" or "test") of a train run's best model (run
    folder or ``best.pt``) or of a pruned model file written by ``mixemb prune``."""
    if split not in ("train", "valid", "test"):
        raise ValueError(f"split must be train, valid or test, got {split!r}")
    path = Path(path)
    file = path / "best.pt" if path.is_dir() else path
    kind = load_checkpoint(file).get("kind")
    if kind == "mixemb.pruned":
        from mixemb.search.export import load_pruned

        model, ckpt = load_pruned(file)
        default_k = ckpt.get("report", {}).get("k", 10)
    else:
        model, ckpt = load_run(file)
        default_k = ckpt.get("train_config", {}).get("k", 10)
    dataset = load_from_spec(ckpt["dataset_spec"])
    saved_freq = torch.as_tensor(ckpt["encoder"]["frequencies"])
    if dataset.num_features != saved_freq.numel() or not torch.equal(
        torch.as_tensor(dataset.encoder.frequencies), saved_freq
    ):
        raise CheckpointError(
            f"{path}: the data no longer encodes as it did at training time "
            f"({dataset.num_features} features now, {saved_freq.numel()} saved)"
        )
    model.to(device)
    k = k if k is not None else default_k
    return evaluate(model, getattr(dataset, split), dataset.task, k=k, device=device)


def score_raw(path: str | Path, columns: dict, *, device: str = "cpu") -> torch.Tensor:
    """Score raw rows with a saved model (train run, ``best.pt`` or pruned file).

    columns: field name → (n,) raw values, as the readers produce them (strings for
        categorical fields, numbers for numeric ones); unseen values map to their
        field's OOV id through the encoder saved with the model.
    Returns (n,) float32 scores (ratings, or logits for ctr / top-k).
    """
    from mixemb.data import FeatureEncoder
    from mixemb.data.schema import Split
    from mixemb.train.trainer import predict

    path = Path(path)
    file = path / "best.pt" if path.is_dir() else path
    if load_checkpoint(file).get("kind") == "mixemb.pruned":
        from mixemb.search.export import load_pruned

        model, ckpt = load_pruned(file)
    else:
        model, ckpt = load_run(file)
    encoder = FeatureEncoder.from_state_dict(ckpt["encoder"])
    ids, values = encoder.transform({k: np.asarray(v) for k, v in columns.items()})
    split = Split(
        torch.from_numpy(ids),
        torch.zeros(len(ids)),
        None if values is None else torch.from_numpy(values),
    )
    return predict(model.to(device), split, device=device)
