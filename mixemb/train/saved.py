"""Checks of what a saved file describes, before anything is built or opened from it.

A model file may come from anyone: its model config must describe exactly the weights it
carries (so building the model allocates no more than the file holds), and the dataset
spec inside it names data by registry name only — a path stored in a file is never
opened (the user gives the file again).
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import torch

from mixemb.data import DATASETS, load_dataset, make_synthetic
from mixemb.models import build_model
from mixemb.train.checkpoint import CheckpointError, first_line


def check_model_config(
    file: str | Path, config: object, weights: object, embedding_shape: tuple[int, int]
) -> dict:
    """``config`` (a ``model.config`` read from ``file``) as a dict, once it is shown to
    describe ``weights`` exactly; raises CheckpointError otherwise.

    weights: the file's non-embedding weights, name → tensor (keys under ``embedding.``
        are ignored: the caller checks the embedding layer, of shape ``embedding_shape``
        = (num_features, embedding_dim)).
    The model is first built on the meta device (no memory), so a crafted size fails here
    as a one-line error, not as a MemoryError.
    """
    if not isinstance(config, dict) or not isinstance(config.get("name"), str):
        raise CheckpointError(f"{file}: the model config is not a mixemb model config")
    if not isinstance(weights, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()
    ):
        raise CheckpointError(f"{file}: the weights are not a name → tensor dict")
    for key, value in config.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise CheckpointError(f"{file}: model config {key}={value} is not finite")
    cfg = dict(config)
    name = cfg.pop("name")
    try:
        with torch.device("meta"):
            shell = build_model(name, **cfg)
    except (TypeError, ValueError, KeyError, RuntimeError, OverflowError) as exc:
        raise CheckpointError(f"{file}: bad model config ({first_line(exc)})") from exc
    want_emb = tuple(shell.embedding.weight.shape)
    if want_emb != tuple(embedding_shape):
        raise CheckpointError(
            f"{file}: the model config says a {want_emb} embedding table, the file holds "
            f"{tuple(embedding_shape)}"
        )
    want = {k: tuple(v.shape) for k, v in shell.state_dict().items() if not _on_emb(k)}
    got = {k: tuple(v.shape) for k, v in weights.items() if not _on_emb(k)}
    if want != got:
        diff = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
        k = diff[0]
        raise CheckpointError(
            f"{file}: weights do not fit the saved model config ({k}: config "
            f"{want.get(k)}, file {got.get(k)})"
        )
    return dict(config)


def _on_emb(key: str) -> bool:
    return key.startswith("embedding.")


# keyword arguments a saved spec may carry: load_dataset's own and the synthetic options
_SPEC_KEYS = {
    p.name
    for fn in (load_dataset, make_synthetic)
    for p in inspect.signature(fn).parameters.values()
    if p.kind is not p.VAR_KEYWORD
}


def saved_dataset_spec(file: str | Path, spec: object, data_file: str | Path | None = None) -> dict:
    """The dataset spec saved in ``file``, made safe to load.

    A spec naming a file the user brought (``path``) is only loaded with ``data_file``,
    the file given again on the command line; its stored path is never opened. A spec
    without ``path`` must name a registry dataset (``mixemb fetch --list``).
    Raises CheckpointError on a spec mixemb never writes.
    """
    if not isinstance(spec, dict) or not all(isinstance(k, str) for k in spec):
        raise CheckpointError(f"{file}: the dataset spec is not a mixemb dataset spec")
    spec = dict(spec)
    if "path" in spec:
        if data_file is None:
            raise CheckpointError(
                f"{file}: the model was trained on a data file of yours; give it again "
                "with --data-file FILE (a path stored in a model file is never opened)"
            )
        spec["path"] = str(Path(data_file).resolve())
    elif data_file is not None:
        raise ValueError(
            f"--data-file: {file} was trained on the registry dataset "
            f"{str(spec.get('name'))[:80]!r}, not on a file"
        )
    elif spec.get("name") not in DATASETS:
        raise CheckpointError(
            f"{file}: the dataset spec names {str(spec.get('name'))[:80]!r}, not a registry "
            f"dataset ({', '.join(DATASETS)})"
        )
    unknown = sorted(set(spec) - _SPEC_KEYS)
    if unknown:
        raise CheckpointError(
            f"{file}: the dataset spec has unknown keys {', '.join(unknown)[:120]}"
        )
    return spec
