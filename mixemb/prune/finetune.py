"""A pruned table in a servable model: fine-tuned with its mask fixed, then ragged.

``to_ragged_model`` swaps a model's embedding layer for a :class:`RaggedEmbedding` holding
only the kept entries; ``finetune_pruned`` first retrains the model with the pruned
entries held at zero (a :class:`MaskedEmbedding`, :func:`finetune_masked`), so the kept
ones adapt to the loss. ``stored_model`` gives the model a table stored in a value dtype
serves: trained in fp32, its stored values rounded through :mod:`mixemb.quant`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from mixemb.data.schema import Dataset
from mixemb.models import build_model
from mixemb.nn import MaskedEmbedding, RaggedEmbedding
from mixemb.quant import round_rows, round_segments
from mixemb.ragged import RaggedTable, popcount64
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
    model: nn.Module, pruned: torch.Tensor, *, value_dtype: torch.dtype | str | None = None
) -> nn.Module:
    """The same model (eval mode) on a RaggedEmbedding of ``pruned`` (N, K); every other
    weight is copied. ``value_dtype`` casts the stored values (default: pruned's dtype;
    "int8": an int8 table, see ``RaggedTable.from_dense``)."""
    table = RaggedTable.from_dense(pruned.cpu(), dtype=value_dtype)
    serving = RaggedEmbedding(table, out_dtype=pruned.dtype)  # rows in the model's dtype
    return on_embedding(model.config, serving, dense_state(model)).eval()


def masked_model(model: nn.Module, table: torch.Tensor, mask: torch.Tensor) -> nn.Module:
    """The same model on a MaskedEmbedding of ``table`` (N, K) float kept where ``mask``
    (N, K) bool; every other weight is copied."""
    return on_embedding(model.config, MaskedEmbedding(table, mask), dense_state(model))


def finetune_masked(
    dataset: Dataset,
    model: nn.Module,
    table: torch.Tensor,
    mask: torch.Tensor,
    config: TrainConfig,
    log: Callable[[str], None] = print,
) -> nn.Module:
    """Retrain ``model`` on ``table`` (N, K) with the entries outside ``mask`` (N, K) bool
    held at zero, with ``config`` (early stopping on validation); returns the tuned model
    (on its MaskedEmbedding)."""
    tuned = masked_model(model, table, mask)
    fit(tuned, dataset, config, log=log)
    return tuned


def finetune_pruned(
    dataset: Dataset,
    model: nn.Module,
    pruned: torch.Tensor,
    config: TrainConfig,
    log: Callable[[str], None] = print,
) -> nn.Module:
    """Retrain ``model`` on ``pruned`` (N, K) (its zeros held at zero) with ``config``
    (early stopping on validation); returns the ragged model of the tuned table."""
    tuned = finetune_masked(dataset, model, pruned, pruned != 0, config, log)
    return to_ragged_model(tuned, tuned.embedding.masked_weight())


@torch.no_grad()
def round_stored_values(embedding: nn.Module, value_dtype: str) -> None:
    """Round, in place, the values ``embedding`` stores to ``value_dtype`` and back (see
    :mod:`mixemb.quant`): an nn.Embedding's rows; a MaskedEmbedding's kept values of each
    row (a row of its block's dense table); a RaggedEmbedding's values of each row. An
    int8 row's scale and bias come from the values it stores, never its pruned zeros."""
    if isinstance(embedding, nn.Embedding):
        embedding.weight.copy_(round_rows(embedding.weight, value_dtype))
    elif isinstance(embedding, MaskedEmbedding):
        w, mask = embedding.weight, embedding.mask
        w[mask] = round_segments(w[mask], mask.sum(1), value_dtype)
    elif isinstance(embedding, RaggedEmbedding):
        lengths = popcount64(embedding.masks).sum(1)
        embedding.values.copy_(round_segments(embedding.values, lengths, value_dtype))
    else:
        raise TypeError(f"cannot round the stored values of a {type(embedding).__name__}")


def stored_model(model: nn.Module, value_dtype: str) -> nn.Module:
    """``model`` as served from a table storing ``value_dtype`` values: ``model`` itself
    for fp32, else a copy whose embedding values are rounded (:func:`round_stored_values`)."""
    if value_dtype == "fp32":
        return model
    rounded = copy.deepcopy(model)
    round_stored_values(rounded.embedding, value_dtype)
    return rounded
