"""A pruned table in a servable model: fine-tuned with its mask fixed, then ragged.

``to_ragged_model`` swaps a model's embedding layer for a :class:`RaggedEmbedding` holding
only the kept entries; ``finetune_pruned`` first retrains the model with the pruned
entries held at zero (a :class:`MaskedEmbedding`), so the kept ones adapt to the loss.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mixemb.data.schema import Dataset
from mixemb.models import build_model
from mixemb.nn import MaskedEmbedding, RaggedEmbedding
from mixemb.ragged import RaggedTable
from mixemb.train import TrainConfig, fit


class WeightsMismatch(RuntimeError):
    """Saved dense weights do not fit the model they are loaded into."""


def dense_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every weight of ``model`` but its embedding layer's."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith("embedding.")}


def on_embedding(config: dict, embedding: nn.Module, dense: dict[str, torch.Tensor]) -> nn.Module:
    """The model described by ``config`` (``model.config``) on ``embedding``, its other
    weights loaded from ``dense`` (see :func:`dense_state`). Raises WeightsMismatch when
    they do not fit."""
    cfg = dict(config)
    model = build_model(cfg.pop("name"), embedding=embedding, **cfg)
    missing, unexpected = model.load_state_dict(dense, strict=False)
    if unexpected or any(not k.startswith("embedding.") for k in missing):
        raise WeightsMismatch(f"weights do not fit: missing {missing}, unexpected {unexpected}")
    return model


def to_ragged_model(
    model: nn.Module, pruned: torch.Tensor, *, value_dtype: torch.dtype | None = None
) -> nn.Module:
    """The same model (eval mode) on a RaggedEmbedding of ``pruned`` (N, K); every other
    weight is copied. ``value_dtype`` casts the stored values (default: pruned's dtype)."""
    table = RaggedTable.from_dense(pruned.cpu(), dtype=value_dtype)
    return on_embedding(model.config, RaggedEmbedding(table), dense_state(model)).eval()


def finetune_pruned(
    dataset: Dataset,
    model: nn.Module,
    pruned: torch.Tensor,
    config: TrainConfig,
    log: Callable[[str], None] = print,
) -> nn.Module:
    """Retrain ``model`` on ``pruned`` (N, K) (its zeros held at zero) with ``config``
    (early stopping on validation); returns the ragged model of the tuned table."""
    masked = MaskedEmbedding(pruned, pruned != 0)
    tuned = on_embedding(model.config, masked, dense_state(model))
    fit(tuned, dataset, config, log=log)
    return to_ragged_model(tuned, masked.masked_weight())
