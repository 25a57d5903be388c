"""What ``mixemb search`` does: a search run folder on disk.

``search_run`` writes ``searched.pt`` (the model with its α, self-describing: model and
embedding config, encoder state, dataset spec, search config) and ``search.json``;
``load_searched`` rebuilds the model from it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from mixemb.data.schema import Dataset
from mixemb.models import build_model
from mixemb.nn import SoftSelectEmbedding
from mixemb.search.on_dataset import SearchConfig, alpha_stats, build_search_model, search
from mixemb.train.checkpoint import (
    CheckpointError,
    atomic_save,
    first_line,
    load_checkpoint,
    write_json,
)
from mixemb.train.run import load_from_spec
from mixemb.train.saved import check_model_config

SEARCHED_KIND = "mixemb.searched"


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
    """Rebuild a searched model from a run folder or its ``searched.pt``; a file whose
    config, embedding settings and weights disagree raises CheckpointError."""
    path = Path(path)
    file = path / "searched.pt" if path.is_dir() else path
    obj = load_checkpoint(file, kind=SEARCHED_KIND)
    state, e = obj.get("model"), obj.get("embedding")
    weight = state.get("embedding.weight") if isinstance(state, dict) else None
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or not isinstance(e, dict):
        raise CheckpointError(f"{file}: no embedding table; not written by mixemb search")
    cfg = check_model_config(file, obj.get("model_config"), state, tuple(weight.shape))
    try:
        emb = SoftSelectEmbedding(
            cfg["num_features"],
            cfg["embedding_dim"],
            e["boundaries"],
            normalize=bool(e["normalize"]),
            l1=float(e["l1"]),
            eps=float(e["eps"]),
        )
        model = build_model(cfg.pop("name"), embedding=emb, **cfg)
        model.load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{file}: damaged searched model ({first_line(exc)})") from exc
    return model.eval(), obj
