"""Training, evaluation and checkpointing of latent factor models."""

from mixemb.train.checkpoint import CheckpointError, atomic_save, load_checkpoint, write_json
from mixemb.train.trainer import TrainConfig, TrainResult, evaluate, fit, predict

__all__ = [
    "CheckpointError",
    "TrainConfig",
    "TrainResult",
    "atomic_save",
    "evaluate",
    "fit",
    "load_checkpoint",
    "predict",
    "write_json",
]
