"""Latent factor models over a pluggable embedding layer.

Every model takes its embedding layer as an argument (any module mapping ids ``(B, F)`` to
``(B, F, K)``), so the same model runs on a uniform table, a DNIS soft-selected table or a
pruned ragged one. Build one with :func:`build_model`.
"""

from mixemb.models.base import (
    MLPTower,
    RecModel,
    make_embedding,
    make_first_order,
    xavier_linear,
)
from mixemb.models.deepfm import DeepFM
from mixemb.models.fm import FM, fm_pairwise
from mixemb.models.mf import MF
from mixemb.models.mlp import MLP
from mixemb.models.neumf import NeuMF
from mixemb.models.registry import MODELS, build_model, model_options
from mixemb.models.wide_deep import WideDeep

__all__ = [
    "MODELS",
    "FM",
    "MF",
    "MLP",
    "DeepFM",
    "MLPTower",
    "NeuMF",
    "RecModel",
    "WideDeep",
    "build_model",
    "fm_pairwise",
    "make_embedding",
    "make_first_order",
    "model_options",
    "xavier_linear",
]
