"""Training, evaluation and checkpointing of latent factor models."""

from mixemb.train.checkpoint import CheckpointError, atomic_save, load_checkpoint, write_json
from mixemb.train.config import config_from
from mixemb.train.loop import EpochHooks, batch_order, evaluate, predict, run_epochs
from mixemb.train.trainer import TrainConfig, TrainResult, fit

__all__ = [
    "CheckpointError",
    "EpochHooks",
    "TrainConfig",
    "TrainResult",
    "atomic_save",
    "batch_order",
    "config_from",
    "evaluate",
    "fit",
    "load_checkpoint",
    "predict",
    "run_epochs",
    "write_json",
]
