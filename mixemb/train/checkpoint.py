"""Atomic checkpoint files that load with ``torch.load(weights_only=True)``.

A checkpoint is written to a temporary file in the same folder, flushed to disk and
renamed over the target, so a kill at any moment leaves either the old file or the
new one, never half of one. Reading a truncated or tampered file raises
:class:`CheckpointError` naming the file instead of a pickle traceback.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupted or of the wrong kind."""


def _atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(f)`` on a temp file beside ``path``, fsync it, rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """Save ``obj`` with torch.save to ``path`` atomically; returns the path."""
    return _atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return _atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` as indented JSON atomically."""
    return atomic_write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", path)


def load_checkpoint(path: str | os.PathLike, *, kind: str | None = None) -> dict:
    """Load a checkpoint saved by :func:`atomic_save` (weights_only, on CPU).

    kind: when given, the file's ``"kind"`` entry must equal it (e.g. "mixemb.train").
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip/pickle errors come in many types
        raise CheckpointError(
            f"{path}: truncated or corrupted checkpoint ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'no detail'})"
        ) from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not a mixemb checkpoint (holds {type(obj).__name__})")
    if kind is not None and obj.get("kind") != kind:
        raise CheckpointError(
            f"{path}: expected a {kind!r} checkpoint, found kind={obj.get('kind')!r}"
        )
    return obj
