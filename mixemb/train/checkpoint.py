"""Atomic checkpoint files that load with ``torch.load(weights_only=True)``.

A checkpoint is written to a temporary file in the same folder, flushed to disk and
renamed over the target, so a kill at any moment leaves either the old file or the
new one, never half of one. The file gets the mode an ordinary ``open`` would give it
(0666 less the umask). Reading a truncated, tampered or foreign file raises
:class:`CheckpointError` naming the file instead of a pickle traceback; a write that
fails (disk full, read-only folder) raises an ``OSError`` naming the file.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
import warnings
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
        # mkstemp creates 0600; a checkpoint is an ordinary file of the user's
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, RuntimeError) and _WRITER in str(exc):
            # torch.save's writer reports a failed write (disk full) as a RuntimeError
            raise OSError(f"{path}: could not write it (disk full? {first_line(exc)})") from exc
        if isinstance(exc, OSError) and str(path) not in str(exc):
            raise OSError(exc.errno, f"{path}: could not write it ({exc.strerror})") from exc
        raise
    return path


_WRITER = "inline_container"  # torch's zip writer, named in the errors it raises


def _umask() -> int:
    """The process umask (read by setting and restoring it: there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of ``exc``'s message (its type name when empty), cut to ``limit``."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]


def check_writable(folder: str | os.PathLike) -> Path:
    """Create ``folder`` if needed and prove a file can be written in it (before hours of
    training find out); raises OSError naming it."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OSError(exc.errno, f"{folder}: cannot write there ({exc.strerror})") from exc
    return folder


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
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refused a global: a file mixemb never writes (torch's own message
        # suggests weights_only=False, i.e. running the file's code; not repeated here)
        why = [ln for ln in str(exc).splitlines() if ln.startswith(("Trying", "Unsupported"))]
        raise CheckpointError(
            f"{path}: not a mixemb file: it contains objects the weights-only loader refuses"
            + (f" ({why[0].strip()[:120]})" if why else "")
        ) from exc
    except Exception as exc:  # zip/pickle errors come in many types
        raise CheckpointError(
            f"{path}: truncated or corrupted checkpoint ({type(exc).__name__}: {first_line(exc)})"
        ) from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not a mixemb checkpoint (holds {type(obj).__name__})")
    if kind is not None and obj.get("kind") != kind:
        raise CheckpointError(
            f"{path}: expected a {kind!r} checkpoint, found kind={obj.get('kind')!r}"
        )
    return obj
