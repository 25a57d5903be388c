"""A dependency-free progress bar with a live loss, written to stderr.

Redraws at most every ``min_interval`` seconds and only when stderr is a terminal
(or ``enabled=True`` is forced); in logs and CI it stays silent and the trainer's
one-line-per-epoch log carries the information.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """``with Progress(total, "epoch 3") as bar: bar.update(1, loss=0.91)``."""

    def __init__(
        self,
        total: int,
        desc: str = "",
        *,
        enabled: bool | None = None,
        stream: TextIO | None = None,
        min_interval: float = 0.2,
        width: int = 24,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            enabled = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.enabled = enabled
        self.total = max(int(total), 0)
        self.desc = desc
        self.count = 0
        self.min_interval = min_interval
        self.width = width
        self.start = time.perf_counter()
        self._last_draw = 0.0
        self.postfix = ""

    def update(self, n: int = 1, **metrics: float) -> None:
        self.count += n
        if metrics:
            self.postfix = " ".join(f"{k}={v:.4f}" for k, v in metrics.items())
        now = time.perf_counter()
        if self.enabled and (
            now - self._last_draw >= self.min_interval or self.count >= self.total
        ):
            self._last_draw = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        frac = self.count / self.total if self.total else 1.0
        filled = int(round(frac * self.width))
        bar = "#" * filled + "-" * (self.width - filled)
        elapsed = now - self.start
        rate = self.count / elapsed if elapsed > 0 else 0.0
        self.stream.write(
            f"\r{self.desc} [{bar}] {self.count}/{self.total} {rate:.0f} it/s {self.postfix}\x1b[K"
        )
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw(time.perf_counter())
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
