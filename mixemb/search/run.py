"""What ``mixemb search`` and ``mixemb prune`` do: run folders and files on disk.

``search_run`` writes ``searched.pt`` (the model with its α, self-describing) and
``search.json``; ``prune_run`` turns a searched model into one pruned file that
``mixemb evaluate`` and :func:`mixemb.search.export.load_pruned` read.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from mixemb.data.schema import Dataset
from mixemb.models import build_model
from mixemb.nn import SoftSelectEmbedding
from mixemb.search.dnis import SearchConfig, alpha_stats, build_search_model, search
from mixemb.search.export import merge_and_prune, save_pruned, to_ragged_model
from mixemb.train.checkpoint import CheckpointError, atomic_save, load_checkpoint, write_json
from mixemb.train.run import load_from_spec
from mixemb.train.trainer import evaluate

SEARCHED_KIND = "mixemb.searched"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def search_run(
    spec: dict,
    model_name: str,
    config: SearchConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    model_kwargs: dict | None = None,
    dataset: Dataset | None = None,
    log: Callable[[str], None] = print,
    progress: bool | None = None,
) -> tuple[nn.Module, dict]:
    """Load data, search, save ``searched.pt`` and ``search.json`` in ``run_dir``."""
    run_dir = Path(run_dir)
    dataset = dataset if dataset is not None else load_from_spec(spec)
    model = build_search_model(dataset, model_name, config, **(model_kwargs or {}))
    log(
        f"{dataset.name} ({dataset.task}): {dataset.num_features:,} features, "
        f"{config.num_blocks} frequency blocks, K={config.dim}"
    )
    result = search(
        model, dataset, config, run_dir=run_dir, resume=resume, log=log, progress=progress
    )
    emb = model.embedding
    atomic_save(
        {
            "kind": SEARCHED_KIND,
            "model_config": dict(model.config),
            "embedding": {
                "boundaries": emb.boundaries.tolist(),
                "normalize": emb.normalize,
                "l1": emb.l1,
                "eps": emb.eps,
            },
            "model": model.state_dict(),
            "encoder": dataset.encoder.state_dict(),
            "dataset_spec": spec,
            "search_config": asdict(config),
        },
        run_dir / "searched.pt",
    )
    summary = {
        "dataset": spec,
        "model": model_name,
        "search_config": asdict(config),
        "best_epoch": result.best_epoch,
        "valid": result.valid,
        "history": result.history,
        "alpha": alpha_stats(emb.alpha),
        "warmup_seconds": result.warmup_seconds,
        "search_seconds": result.search_seconds,
    }
    write_json(summary, run_dir / "search.json")
    return model, summary


def load_searched(path: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild a searched model from a run folder or its ``searched.pt``."""
    path = Path(path)
    file = path / "searched.pt" if path.is_dir() else path
    obj = load_checkpoint(file, kind=SEARCHED_KIND)
    cfg = dict(obj["model_config"])
    e = obj["embedding"]
    emb = SoftSelectEmbedding(
        cfg["num_features"],
        cfg["embedding_dim"],
        e["boundaries"],
        normalize=e["normalize"],
        l1=e["l1"],
        eps=e["eps"],
    )
    model = build_model(cfg.pop("name"), embedding=emb, **cfg)
    try:
        model.load_state_dict(obj["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{file}: weights do not fit the saved model config") from exc
    return model.eval(), obj


def prune_run(
    searched: str | Path,
    out: str | Path,
    *,
    keep: int | None = None,
    ratio: float | None = None,
    nbytes: int | None = None,
    tau: float | None = None,
    dtype: str = "fp32",
    finetune_epochs: int = 0,
    log: Callable[[str], None] = print,
) -> dict:
    """Merge α, prune to the budget, (fine-tune), export one pruned file; returns the report."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    t0 = time.perf_counter()
    model, obj = load_searched(searched)
    emb = model.embedding
    pruned, report = merge_and_prune(
        emb, keep=keep, ratio=ratio, nbytes=nbytes, tau=tau, value_dtype=DTYPES[dtype]
    )
    dataset = load_from_spec(obj["dataset_spec"])
    if finetune_epochs > 0:
        from mixemb.search.methods import MethodConfig, finetune_pruned

        sc = obj["search_config"]
        cfg = MethodConfig(
            dim=sc["dim"],
            batch_size=sc["batch_size"],
            lr=sc["lr"],
            k=sc["k"],
            finetune_epochs=finetune_epochs,
            patience=sc["patience"],
        )
        serving = finetune_pruned(dataset, model, pruned, cfg, sc["seed"], log)
        if DTYPES[dtype] != torch.float32:
            serving = to_ragged_model(
                serving, serving.embedding.table.to_dense(), value_dtype=DTYPES[dtype]
            )
    else:
        serving = to_ragged_model(model, pruned, value_dtype=DTYPES[dtype])
    n, k = pruned.shape
    k_eval = obj["search_config"].get("k", 10)
    metrics = {
        split: evaluate(serving, getattr(dataset, split), dataset.task, k=k_eval)
        for split in ("valid", "test")
    }
    info = {
        "nnz": report.nnz,
        "ratio_of_uniform": report.ratio,
        "tau": report.tau,
        "stored_bytes": serving.embedding.nbytes(),
        "uniform_dense_bytes": n * k * 4,
        "dim_histogram": report.dim_histogram(),
        "block_mean_dims": report.block_mean_dims(emb.boundaries),
        "dtype": dtype,
        "finetune_epochs": finetune_epochs,
        "valid": metrics["valid"],
        "test": metrics["test"],
        "seconds": time.perf_counter() - t0,
        "k": k_eval,
    }
    save_pruned(
        serving,
        out,
        encoder=obj["encoder"],
        dataset_spec=obj["dataset_spec"],
        report={k: v for k, v in info.items() if k != "dim_histogram"},
    )
    return info
