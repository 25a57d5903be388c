"""Model registry: ``build_model(name, ...)`` and the ``MODELS`` table."""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from mixemb.models.base import RecModel, make_embedding
from mixemb.models.deepfm import DeepFM
from mixemb.models.fm import FM
from mixemb.models.mf import MF
from mixemb.models.mlp import MLP
from mixemb.models.neumf import NeuMF
from mixemb.models.wide_deep import WideDeep

MODELS: dict[str, type[RecModel]] = {
    cls.name: cls for cls in (MF, MLP, NeuMF, FM, WideDeep, DeepFM)
}


def model_options(name: str) -> dict[str, Any]:
    """Keyword options of model ``name`` with their defaults (e.g. hidden, dropout)."""
    cls = _model_class(name)
    params = inspect.signature(cls.__init__).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _model_class(name: str) -> type[RecModel]:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; valid names: {', '.join(sorted(MODELS))}"
        ) from None


def build_model(
    name: str,
    num_features: int,
    num_fields: int,
    embedding_dim: int,
    embedding: nn.Module | None = None,
    **kwargs: Any,
) -> RecModel:
    """Build model ``name`` on ``embedding`` (a fresh Xavier-normal ``nn.Embedding(N, K)``
    when None). ``kwargs`` are model options (``hidden``, ``dropout``, ``pairwise_reduce``).

    ``build_model(**model.config)`` rebuilds the same architecture (``config`` holds
    ``name``, the sizes and every option).
    """
    cls = _model_class(name)
    options = model_options(name)
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        raise ValueError(
            f"model {name!r} has no option {', '.join(map(repr, unknown))}; "
            f"its options: {', '.join(options) or 'none'}"
        )
    for key, value in (
        ("num_features", num_features),
        ("num_fields", num_fields),
        ("embedding_dim", embedding_dim),
    ):
        if int(value) != value or value < 1:
            raise ValueError(f"{key} must be a positive int, got {value!r}")
    if num_fields < cls.min_fields:
        raise ValueError(f"model {name!r} needs at least {cls.min_fields} fields, got {num_fields}")
    if embedding is None:
        embedding = make_embedding(int(num_features), int(embedding_dim))
    return cls(embedding, int(num_features), int(num_fields), int(embedding_dim), **kwargs)
