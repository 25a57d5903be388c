"""Shared pieces of every latent factor model.

A model never indexes an embedding table itself: it receives an embedding *layer*, any
``nn.Module`` mapping ids ``(B, F)`` int64 to ``(B, F, K)`` float. The same model therefore
runs on a plain ``nn.Embedding`` (uniform-dimension baseline), on a DNIS soft-selected table
or on a pruned ragged table.

Conventions shared by all models:

- ``forward(ids, values=None) -> (B,)`` raw score: a rating, or a logit for ctr / top-k.
- ``values`` (B, F) float multiplies each looked-up embedding (``e * values[..., None]``)
  and each first-order weight (numeric fields; 1.0 for categorical ones).
- ``bias`` is a scalar parameter; the trainer sets it to the label mean / base-rate logit.
- ``config`` is a JSON-able dict: ``name`` plus exactly the keyword arguments of
  :func:`mixemb.models.build_model` that rebuild the model (the embedding layer excepted).
- Parameters fall into three disjoint groups: :meth:`RecModel.embedding_parameters`,
  :meth:`RecModel.first_order_parameters` (first-order weights and the global bias) and
  :meth:`RecModel.dense_parameters` (everything else: MLP towers, output layers).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn


def make_embedding(num_features: int, dim: int) -> nn.Embedding:
    """A plain ``(num_features, dim)`` table, Xavier-normal: std = sqrt(2 / (N + K))."""
    if num_features < 1 or dim < 1:
        raise ValueError(f"need num_features >= 1 and dim >= 1, got {num_features}, {dim}")
    emb = nn.Embedding(num_features, dim)
    nn.init.xavier_normal_(emb.weight)
    return emb


def make_first_order(num_features: int) -> nn.Embedding:
    """Per-feature scalar weights (the "wide" / linear part), initialised to zero."""
    emb = nn.Embedding(num_features, 1)
    nn.init.zeros_(emb.weight)
    return emb


def xavier_linear(in_features: int, out_features: int, bias: bool = True) -> nn.Linear:
    """``nn.Linear`` with a Xavier-normal weight and a zero bias."""
    layer = nn.Linear(in_features, out_features, bias=bias)
    nn.init.xavier_normal_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


def check_hidden(hidden: Sequence[int] | int) -> list[int]:
    """Normalise ``hidden`` (a list of layer widths, or a single int) to a list of ints >= 1."""
    if isinstance(hidden, int):
        hidden = [hidden]
    try:
        out = [int(h) for h in hidden]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"hidden must be a list of positive ints, got {hidden!r}") from exc
    if any(h < 1 for h in out) or any(int(h) != h for h in hidden):
        raise ValueError(f"hidden must be a list of positive ints, got {list(hidden)!r}")
    return out


def check_dropout(dropout: float) -> float:
    dropout = float(dropout)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    return dropout


class MLPTower(nn.Module):
    """``Linear → ReLU → Dropout`` per hidden width; the output has ``hidden[-1]`` features
    (``in_features`` when ``hidden`` is empty: the tower is then the identity)."""

    def __init__(self, in_features: int, hidden: Sequence[int], dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers.append(xavier_linear(width, h))
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        self.layers = nn.Sequential(*layers)
        self.out_features = width

    def first_layer(self) -> nn.Linear | None:
        """The linear layer that reads the tower's input (None for an identity tower)."""
        return self.layers[0] if len(self.layers) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class RecModel(nn.Module):
    """Base class: holds the embedding layer, the global bias and the config.

    Subclasses take ``(embedding, *sizes, **options)`` — sizes being ``num_features``,
    ``num_fields``, ``embedding_dim`` in that order, options keyword-only with defaults —,
    set ``name``, call ``super().__init__(embedding, *sizes, **options)`` (the options go
    into ``config``), and put first-order weights in ``self.first_order`` (an
    ``nn.Embedding(N, 1)``) if they have any.
    """

    name: ClassVar[str] = "base"
    min_fields: ClassVar[int] = 1
    # whether :meth:`absorb_rotation` keeps the outputs exact (embeddings that meet only
    # in dot products, or enter a linear layer first)
    absorbs_rotation: ClassVar[bool] = False

    def __init__(
        self,
        embedding: nn.Module,
        num_features: int,
        num_fields: int,
        embedding_dim: int,
        **model_kwargs: Any,
    ):
        super().__init__()
        if num_features < 1:
            raise ValueError(f"num_features must be >= 1, got {num_features}")
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {embedding_dim}")
        if num_fields < self.min_fields:
            raise ValueError(
                f"model {self.name!r} needs at least {self.min_fields} fields, got {num_fields}"
            )
        if not isinstance(embedding, nn.Module):
            raise TypeError(f"embedding must be an nn.Module, got {type(embedding).__name__}")
        self.embedding = embedding
        self.num_features = int(num_features)
        self.num_fields = int(num_fields)
        self.embedding_dim = int(embedding_dim)
        self.bias = nn.Parameter(torch.zeros(()))
        self.first_order: nn.Embedding | None = None
        self.config: dict[str, Any] = {
            "name": self.name,
            "num_features": self.num_features,
            "num_fields": self.num_fields,
            "embedding_dim": self.embedding_dim,
            **model_kwargs,
        }

    # ---- inputs -------------------------------------------------------------------------
    def check_input(self, ids: torch.Tensor, values: torch.Tensor | None) -> None:
        if ids.dim() != 2 or ids.shape[1] != self.num_fields:
            raise ValueError(
                f"{self.name}: ids must be (B, {self.num_fields}), got {tuple(ids.shape)}"
            )
        if values is not None and values.shape != ids.shape:
            raise ValueError(
                f"{self.name}: values must match ids {tuple(ids.shape)}, got {tuple(values.shape)}"
            )

    def embed(self, ids: torch.Tensor, values: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, F, K)`` embeddings of ``ids`` from the embedding layer, times ``values``."""
        e = self.embedding(ids)
        if values is not None:
            e = e * values.unsqueeze(-1).to(e.dtype)
        return e

    def first_order_term(self, ids: torch.Tensor, values: torch.Tensor | None) -> torch.Tensor:
        """``(B,)`` sum over fields of ``w[id_f] * value_f`` (zero if no first-order weights)."""
        if self.first_order is None:
            return ids.new_zeros(ids.shape[0], dtype=self.bias.dtype)
        w = self.first_order(ids).squeeze(-1)
        if values is not None:
            w = w * values.to(w.dtype)
        return w.sum(1)

    # ---- rotations of the embedding space ----------------------------------------------
    def absorb_rotation(self, v: torch.Tensor) -> None:
        """Make the model's outputs on a table E·V equal its outputs on E, for V (K, K)
        orthogonal: dot products between embeddings are unchanged by V; a linear layer
        reading the concatenated field embeddings takes W_f·V for each field's block of
        columns. Raises ValueError for a model where no such change is exact."""
        if not self.absorbs_rotation:
            raise ValueError(f"{self.name}: a rotation of its embeddings is not exact")
        layer = self.first_concat_layer()
        if layer is None:
            return
        with torch.no_grad():
            w = layer.weight.double().reshape(layer.out_features, self.num_fields, -1)
            layer.weight.copy_((w @ v.double()).reshape(layer.out_features, -1))

    def first_concat_layer(self) -> nn.Linear | None:
        """The linear layer that reads the concatenated field embeddings (F·K inputs):
        the tower's first layer (the output layer when the tower has none), None for a
        model without a tower."""
        tower = getattr(self, "tower", None)
        return None if tower is None else tower.first_layer() or self.out

    def add_tower(self, hidden: Sequence[int], dropout: float, out_extra: int = 0) -> None:
        """``self.tower``: an MLPTower over the concatenated field embeddings (F·K inputs),
        and ``self.out``: a bias-free linear layer from ``out_extra`` + its outputs to one
        score (Xavier-normal, created in that order)."""
        self.tower = MLPTower(self.num_fields * self.embedding_dim, hidden, dropout)
        self.out = xavier_linear(out_extra + self.tower.out_features, 1, bias=False)

    # ---- parameter groups ---------------------------------------------------------------
    def embedding_parameters(self) -> list[nn.Parameter]:
        """Parameters of the embedding layer (table, DNIS α, ... whatever it holds)."""
        return list(self.embedding.parameters())

    def first_order_parameters(self) -> list[nn.Parameter]:
        """The global bias and the per-feature first-order weights."""
        params = [self.bias]
        if self.first_order is not None:
            params += list(self.first_order.parameters())
        return params

    def dense_parameters(self) -> list[nn.Parameter]:
        """Every other parameter (MLP towers, output layers)."""
        taken = {id(p) for p in self.embedding_parameters() + self.first_order_parameters()}
        return [p for p in self.parameters() if id(p) not in taken]

    def extra_repr(self) -> str:
        opts = {
            k: v
            for k, v in self.config.items()
            if k not in ("name", "num_features", "num_fields", "embedding_dim")
        }
        s = f"num_features={self.num_features}, num_fields={self.num_fields}, "
        s += f"embedding_dim={self.embedding_dim}"
        return s + "".join(f", {k}={v!r}" for k, v in opts.items())
