"""One experiment's ``results.json`` shared by several processes (e.g. one per seed).

Every read and write of the file happens under an exclusive advisory lock (fcntl, on a
``results.json.lock`` file beside it), so processes do not lose each other's cells. A cell
being run is claimed in ``results.json.claims`` (pid, host, start time), keyed by the
experiment's config and the cell, so another process leaves it alone; a claim is dropped
once its cell is written or its process has exited. The first process to start writes the
experiment's header (dataset, model, config) into ``results.json``; a process with another
config is then refused before it runs anything, so two configs never share a file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from mixemb.methods import ResultsStore, load_results
from mixemb.train import write_json

# a claim from another host cannot be checked for a live process: it lapses after this
CLAIM_TTL_SECONDS = 24 * 3600


class ConfigMismatch(ValueError):
    """``results.json`` holds another experiment than the one this process would run."""


def config_id(header: dict) -> str:
    """A short stable digest of an experiment's header (dataset, model, config)."""
    text = json.dumps(header, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def describe_mismatch(on_disk: dict, header: dict) -> str:
    """The header fields that differ, as ``config.dim: 64 in the file, 32 here``."""
    diffs = []
    for key, value in header.items():
        have = on_disk.get(key)
        if isinstance(value, dict) and isinstance(have, dict):
            for k in sorted(set(value) | set(have)):
                if have.get(k) != value.get(k):
                    diffs.append(f"{key}.{k}: {have.get(k)!r} in the file, {value.get(k)!r} here")
        elif have != value:
            diffs.append(f"{key}: {have!r} in the file, {value!r} here")
    return "; ".join(diffs)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (through ``path.lock``) while the block runs;
    no-op where fcntl does not exist (then one process per output folder)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _claim_alive(claim: dict) -> bool:
    if claim.get("host") != socket.gethostname():
        return time.time() - claim.get("since", 0) < CLAIM_TTL_SECONDS
    try:
        os.kill(int(claim["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


class SharedResults(ResultsStore):
    """``path`` (an experiment's results.json) with ``header``, shared between processes:
    the store :func:`mixemb.methods.compare` runs the cells against."""

    def __init__(self, path: Path, header: dict):
        super().__init__(path, header)
        self.claims_path = self.path.with_name(self.path.name + ".claims")
        self.id = config_id(header)

    def _load(self) -> dict:
        """The file's results (caller holds the lock); ConfigMismatch for another config."""
        try:
            return load_results(self.path, self.header)
        except ValueError as exc:
            try:
                diff = describe_mismatch(json.loads(self.path.read_text()), self.header)
            except (OSError, ValueError):
                raise exc from None
            raise ConfigMismatch(
                f"{self.path} holds another experiment config ({diff}); "
                "use another --out or the config it was run with"
            ) from None

    def reserve(self) -> dict:
        """Check the file holds this config (else ConfigMismatch), or create it with this
        header and no cells; returns the results."""
        with locked(self.path):
            results = self._load()
            if not self.path.exists():
                write_json(results, self.path)
        return results

    def load(self) -> dict:
        with locked(self.path):
            return self._load()

    def record(self, results: dict) -> dict:
        """The cells on disk (also other processes') ∪ ``results``' cells, written back;
        returns the merged results."""
        with locked(self.path):
            merged = self._load()
            merged["cells"].update(results["cells"])
            write_json(merged, self.path)
        return merged

    sync = record  # at the end: pick up what the other processes added

    def lookup(self, results: dict, key: str) -> dict | None:
        return results["cells"].get(key) or self.load()["cells"].get(key)

    def take(self, key: str) -> tuple[dict | None, str | None]:
        """Claim cell ``key`` for this process unless another process finished it or runs
        it: (finished cell, None), (None, "running in process P on H"), or (None, None)
        when this process now holds the claim, which :meth:`release` drops."""
        with locked(self.path):
            done = self._load()["cells"].get(key)
            if done is not None:
                return done, None
            claims = json.loads(self.claims_path.read_text()) if self.claims_path.exists() else {}
            mine = {"pid": os.getpid(), "host": socket.gethostname()}
            claim = claims.get(self._claim_key(key))
            if claim and {k: claim.get(k) for k in mine} != mine and _claim_alive(claim):
                return None, f"running in process {claim['pid']} on {claim['host']}"
            claims = {k: c for k, c in claims.items() if _claim_alive(c)}  # drop the dead
            claims[self._claim_key(key)] = {**mine, "since": time.time()}
            write_json(claims, self.claims_path)
        return None, None

    def release(self, key: str) -> None:
        """Drop this process's claim on ``key``."""
        with locked(self.path):
            if not self.claims_path.exists():
                return
            claims = json.loads(self.claims_path.read_text())
            if claims.pop(self._claim_key(key), None) is not None:
                write_json(claims, self.claims_path)

    def _claim_key(self, key: str) -> str:
        return f"{self.id}|{key}"
