"""Loads the compiled extension ``mixemb._C`` (its TORCH_LIBRARY registers the ops).

``HAS_EXT`` says whether it loaded. If it did not (a pure-Python install, or a build for
another torch), ops fall back to their pure-PyTorch references and say so once.
"""

from __future__ import annotations

import warnings

import torch

HAS_EXT = False
HAS_CUDA_KERNELS = False
LOAD_ERROR: str | None = None

try:
    from mixemb import _C  # noqa: F401

    HAS_EXT = True
    HAS_CUDA_KERNELS = torch._C._dispatch_has_kernel_for_dispatch_key(
        "mixemb::ragged_gather", "CUDA"
    )
except (ImportError, OSError) as exc:  # missing, or built against another torch
    LOAD_ERROR = f"{type(exc).__name__}: {exc}"

_warned = False


def warn_fallback(op: str) -> None:
    """One warning per process that ``op`` runs its reference because _C is missing."""
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(
            f"mixemb._C is not available ({LOAD_ERROR}); {op} and the other serving ops run "
            "their pure-PyTorch references. Reinstall with "
            "`pip install --no-build-isolation -e .` to build it.",
            stacklevel=3,
        )


def describe() -> str:
    """What was built, in one line (e.g. for logs and bug reports)."""
    if not HAS_EXT:
        return f"mixemb._C not loaded ({LOAD_ERROR})"
    kind = "with CUDA kernels" if HAS_CUDA_KERNELS else "without CUDA"
    return f"mixemb._C built {kind}, running on torch {torch.__version__}"
