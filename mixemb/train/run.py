"""A run: dataset spec + model + training config → a folder with checkpoints and results.

``train_run`` is what ``mixemb train`` does. ``best.pt`` is self-describing (model config,
encoder state, dataset spec), so a run folder is all that is needed to score it later
(:mod:`mixemb.artifacts` reads it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from mixemb.data import Dataset, load_dataset
from mixemb.models import build_model
from mixemb.train.checkpoint import write_json
from mixemb.train.trainer import TrainConfig, TrainResult, fit


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
