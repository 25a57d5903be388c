"""``MethodConfig``: the settings every method of a comparison shares (JSON-able).

Its ``asdict`` is stored in every result cell and in the header of ``results.json``
(a comparison refuses a file written with another config), so its fields, names and
defaults are part of the results' format.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mixemb.prune import UNITS
from mixemb.search import SearchConfig
from mixemb.train import TrainConfig, config_from


@dataclass
class MethodConfig:
    """Settings shared by every method (JSON-able).

    dim: K of the uniform reference table. num_blocks: L frequency blocks.
    epochs / patience / lr / batch_size: the plain trainer's settings (all methods).
    search_epochs / warmup_epochs / alpha_lr / l1: DNIS search settings.
    finetune_epochs: maximum fine-tuning epochs of dnis_ft / magnitude_ft (mask fixed).
    random_trials: trials of random search. mde_exponent: a of MDE.
    min_block_dim: smallest block dimension of random search (4, lowered if the budget
        cannot afford it).
    budget_unit: "params" (a fraction of N·K entries) or "bytes" (a fraction of the dense
        uniform-K fp32 bytes, metadata of ragged tables included).
    """

    dim: int = 64
    num_blocks: int = 10
    epochs: int = 20
    patience: int = 2
    lr: float = 1e-3
    batch_size: int = 1024
    search_epochs: int = 5
    warmup_epochs: int = 2
    alpha_lr: float = 1e-2
    l1: float = 1e-5
    finetune_epochs: int = 10
    random_trials: int = 5
    mde_exponent: float = 0.3
    min_block_dim: int = 4
    k: int = 10
    device: str = "cpu"
    model_kwargs: dict = field(default_factory=dict)
    budget_unit: str = "params"

    def __post_init__(self) -> None:
        if self.budget_unit not in UNITS:
            raise ValueError(f"budget_unit must be 'params' or 'bytes', got {self.budget_unit!r}")
        self.train_config(0)  # its checks (finite lr, ...)
        self.search_config(0)  # its checks (finite alpha_lr, l1, ...)
        if not abs(self.mde_exponent) < float("inf"):  # also refuses nan
            raise ValueError(f"mde_exponent must be finite, got {self.mde_exponent}")

    def train_config(self, seed: int, epochs: int | None = None) -> TrainConfig:
        """The plain trainer's config (the fields both share), for ``epochs`` (default
        ``self.epochs``)."""
        return config_from(TrainConfig, self, epochs=epochs or self.epochs, seed=seed)

    def search_config(self, seed: int) -> SearchConfig:
        """The DNIS search's config (the fields both share)."""
        return config_from(SearchConfig, self, seed=seed)
