"""Reading what the stages write: any saved model, scored on a split or on raw rows.

A saved model is self-describing (model config, encoder state, dataset spec), so its file
is all that is needed to score it later. Three kinds are read:

* a train run (``mixemb train``): its folder or its ``best.pt`` (kind "mixemb.model");
* a search run (``mixemb search``): its folder or its ``searched.pt`` (the model with α);
* a pruned model file (``mixemb prune``, kind "mixemb.pruned").

``evaluate_run`` is what ``mixemb evaluate`` does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from mixemb.data import FeatureEncoder
from mixemb.data.schema import Split
from mixemb.models import build_model
from mixemb.prune import load_pruned
from mixemb.search.run import SEARCHED_KIND, load_searched
from mixemb.train import evaluate, predict
from mixemb.train.checkpoint import CheckpointError, load_checkpoint
from mixemb.train.run import load_from_spec
from mixemb.train.saved import check_model_config, saved_dataset_spec

SPLITS = ("train", "valid", "test")


def _model_file(path: str | Path) -> Path:
    """A run folder's model file (``best.pt``, else ``searched.pt``) or ``path`` itself."""
    path = Path(path)
    if not path.is_dir():
        return path
    if not (path / "best.pt").exists() and (path / "searched.pt").exists():
        return path / "searched.pt"
    return path / "best.pt"


def load_run(path: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild the best model of a train run folder (or its ``best.pt``); returns
    (model in eval mode, checkpoint dict). A file whose config and weights disagree raises
    CheckpointError."""
    file = _model_file(path)
    ckpt = load_checkpoint(file, kind="mixemb.model")
    for key in ("model_name", "model_config", "dataset_spec", "encoder"):
        if key not in ckpt:
            raise CheckpointError(f"{file}: missing {key!r}; not written by mixemb train")
    state = ckpt.get("model")
    weight = state.get("embedding.weight") if isinstance(state, dict) else None
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise CheckpointError(f"{file}: no embedding table; not written by mixemb train")
    cfg = check_model_config(file, ckpt["model_config"], state, tuple(weight.shape))
    name = cfg.pop("name")
    try:
        model = build_model(name, **cfg)
        model.load_state_dict(state)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{file}: weights do not fit the saved model config: {exc}") from exc
    model.eval()
    return model, ckpt


def load_model(path: str | Path) -> tuple[nn.Module, dict, int]:
    """Any saved model: a train run, a search run or a pruned file (folder or file).

    Returns (model in eval mode, file dict, the top-k cut-off ``k`` it was selected with).
    """
    file = _model_file(path)
    kind = load_checkpoint(file).get("kind")
    if kind == "mixemb.pruned":
        model, ckpt = load_pruned(file)
        return model, ckpt, _saved_k(file, ckpt, "report")
    if kind == SEARCHED_KIND:
        model, ckpt = load_searched(file)
        return model, ckpt, _saved_k(file, ckpt, "search_config")
    model, ckpt = load_run(file)
    return model, ckpt, _saved_k(file, ckpt, "train_config")


def _saved_k(file: Path, ckpt: dict, section: str) -> int:
    """The top-k cut-off saved in ``ckpt[section]["k"]`` (10 when absent)."""
    k = ckpt.get(section, {})
    k = k.get("k", 10) if isinstance(k, dict) else None
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise CheckpointError(f"{file}: damaged {section} (k={str(k)[:40]})")
    return k


def _encoder_frequencies(file: Path, ckpt: dict) -> torch.Tensor:
    try:
        freq = torch.as_tensor(ckpt["encoder"]["frequencies"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{file}: damaged encoder state ({type(exc).__name__})") from exc
    if freq.dim() != 1:
        raise CheckpointError(f"{file}: damaged encoder state (frequencies of shape {freq.shape})")
    return freq


def evaluate_run(
    path: str | Path,
    split: str = "test",
    *,
    k: int | None = None,
    device: str = "cpu",
    data_file: str | Path | None = None,
) -> dict[str, float]:
    """Metrics on ``split`` ("train", "valid" or "test") of a saved model (see
    :func:`load_model`); the data is reloaded from the saved spec and must still encode
    as it did when the model was trained.

    data_file: the data file a model trained on a file of yours was trained on (a path
        stored in the model file is never opened; see
        :func:`mixemb.train.saved.saved_dataset_spec`).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be train, valid or test, got {split!r}")
    if k is not None and k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    model, ckpt, default_k = load_model(path)
    file = _model_file(path)
    spec = saved_dataset_spec(file, ckpt.get("dataset_spec"), data_file)
    saved_freq = _encoder_frequencies(file, ckpt)
    dataset = load_from_spec(spec)
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
    """Score raw rows with a saved model (see :func:`load_model`).

    columns: field name → (n,) raw values, as the readers produce them (strings for
        categorical fields, numbers for numeric ones); unseen values map to their
        field's OOV id through the encoder saved with the model.
    Returns (n,) float32 scores (ratings, or logits for ctr / top-k).
    """
    model, ckpt, _ = load_model(path)
    try:
        encoder = FeatureEncoder.from_state_dict(ckpt["encoder"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(
            f"{_model_file(path)}: damaged encoder state ({type(exc).__name__})"
        ) from exc
    ids, values = encoder.transform({k: np.asarray(v) for k, v in columns.items()})
    split = Split(
        torch.from_numpy(ids),
        torch.zeros(len(ids)),
        None if values is None else torch.from_numpy(values),
    )
    return predict(model.to(device), split, device=device)
