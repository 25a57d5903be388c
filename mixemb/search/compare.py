"""``mixemb compare``: DNIS and the baselines over budgets and seeds, resumable.

Every finished cell (method, budget, seed) is written to ``results.json`` at once
(atomically); a rerun skips cells already there, so a killed comparison continues where
it stopped. Several processes may share one ``--out`` (e.g. one per seed, to use more
cores): each write merges with the file under an exclusive lock, and a cell another
process finished is not run again, nor one it is running (its claim in
``results.json.claims``, dropped once the cell is written or the process has exited).
``results.md`` (mean ± std over seeds) and, when matplotlib is installed, ``results.png``
(test metric vs stored bytes) are rewritten from ``results.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import statistics
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

from mixemb.data.schema import Dataset
from mixemb.metrics import primary_metric
from mixemb.search.methods import (
    METHODS,
    VALID,
    InfeasibleBudget,
    MethodConfig,
    clear_cache,
    dnis_wall_seconds,
    parse_method,
    run_method,
    time_reference,
)
from mixemb.train.checkpoint import write_json


def cell_key(method: str, budget: float, seed: int) -> str:
    return f"{method}|{budget:g}|{seed}"


def plan_cells(
    methods: Sequence[str], budgets: Sequence[float], seeds: Sequence[int]
) -> list[tuple[str, float, int]]:
    """The (method, budget, seed) cells a comparison runs, in the order it runs them:
    ``uniform`` at budget 1.0 (the uniform-K reference) for every seed first, then seed by
    seed. Seed-major, so a seed's DNIS search and uniform-K model are trained once and
    reused by all its budgets and variants (see methods._cached), and a partial run already
    holds whole curves for its first seeds; time-matched methods (``random…@m``) come after
    the cells of m whose wall time they take."""
    plan = [("uniform", 1.0, s) for s in seeds]
    ordered = sorted(methods, key=lambda m: time_reference(m) is not None)
    plan += [
        (m, b, s) for s in seeds for b in budgets for m in ordered if (m, b) != ("uniform", 1.0)
    ]
    return plan


def load_results(path: Path, header: dict) -> dict:
    """Existing results for the same experiment, or a fresh container."""
    if not path.exists():
        return {**header, "cells": {}}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    for key, value in header.items():
        if data.get(key) != value:
            raise ValueError(
                f"{path} holds a different experiment ({key}: {data.get(key)!r} != {value!r}); "
                "use another --out"
            )
    return data


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (through a ``.lock`` file next to it) while
    the block runs, so that processes sharing an output folder do not lose each other's
    cells; no-op where fcntl does not exist."""
    try:
        import fcntl
    except ImportError:  # not POSIX: one process per output folder
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def merge_results(path: Path, header: dict, results: dict) -> dict:
    """Cells on disk (also another process's) ∪ ``results``' cells, written back
    atomically under the lock; returns the merged results."""
    with _locked(path):
        merged = load_results(path, header)
        merged["cells"].update(results["cells"])
        write_json(merged, path)
    return merged


def finished_elsewhere(path: Path, header: dict, key: str) -> dict | None:
    """The cell ``key`` if another process sharing ``path`` has finished it."""
    with _locked(path):
        return load_results(path, header)["cells"].get(key)


# a claim from another host cannot be checked for a live process: it lapses after this
CLAIM_TTL_SECONDS = 24 * 3600


def _claims_path(path: Path) -> Path:
    return path.with_name(path.name + ".claims")


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


def claim_cell(path: Path, header: dict, key: str) -> tuple[dict | None, dict | None]:
    """Take cell ``key`` for this process, unless another process sharing ``path`` has
    finished it or is running it. Returns (finished cell, None), (None, the live claim of
    the process running it), or (None, None) when this process now holds the claim (in
    ``results.json.claims``: pid, host, start time), which :func:`release_cell` drops."""
    claims_path = _claims_path(path)
    with _locked(path):
        done = load_results(path, header)["cells"].get(key)
        if done is not None:
            return done, None
        claims = json.loads(claims_path.read_text()) if claims_path.exists() else {}
        claim = claims.get(key)
        mine = {"pid": os.getpid(), "host": socket.gethostname()}
        if claim and {k: claim.get(k) for k in mine} != mine and _claim_alive(claim):
            return None, claim
        claims = {k: c for k, c in claims.items() if _claim_alive(c)}  # drop the dead
        claims[key] = {**mine, "since": time.time()}
        write_json(claims, claims_path)
    return None, None


def release_cell(path: Path, key: str) -> None:
    """Drop this process's claim on ``key`` (see :func:`claim_cell`)."""
    claims_path = _claims_path(path)
    with _locked(path):
        if not claims_path.exists():
            return
        claims = json.loads(claims_path.read_text())
        if claims.pop(key, None) is not None:
            write_json(claims, claims_path)


def _matched_seconds(path, header, results, method, budget, seed) -> float | None:
    """The wall time a time-matched ``method`` gets at (budget, seed): that of its DNIS
    cell (:func:`dnis_wall_seconds`), also when another process ran it; None while that
    cell has not run. Raises InfeasibleBudget when it was skipped."""
    ref = time_reference(method)
    key = cell_key(ref, budget, seed)
    cell = results["cells"].get(key) or finished_elsewhere(path, header, key)
    if cell is not None and "skipped" in cell:
        raise InfeasibleBudget(f"the {ref} cell it matches was skipped: {cell['skipped']}")
    return None if cell is None else dnis_wall_seconds(cell)


def compare(
    dataset: Dataset,
    spec: dict,
    model_name: str,
    config: MethodConfig,
    *,
    methods: Sequence[str] = METHODS,
    budgets: Sequence[float] = (0.5, 0.2, 0.05),
    seeds: Sequence[int] = (0, 1, 2),
    out: str | Path = "runs/compare",
    log: Callable[[str], None] = print,
) -> dict:
    """Run every missing cell, then write results.json / results.md / results.png in ``out``.

    The uniform-K reference (``uniform`` at budget 1.0) is always included.
    """
    unknown = []
    for m in methods:
        try:
            parse_method(m)
        except ValueError:
            unknown.append(m)
    if unknown:
        raise ValueError(f"unknown methods {unknown}; valid: {VALID}")
    out = Path(out)
    path = out / "results.json"
    header = {"dataset": spec, "model": model_name, "config": asdict(config)}
    results = load_results(path, header)
    plan = plan_cells(methods, budgets, seeds)
    todo = [p for p in plan if cell_key(*p) not in results["cells"]]
    log(f"compare: {len(plan)} cells, {len(plan) - len(todo)} already done")
    metric, _ = primary_metric(dataset.task, config.k)
    for i, (method, budget, seed) in enumerate(todo, 1):
        key = cell_key(method, budget, seed)
        step = f"[{i}/{len(todo)}] {method:9s} budget {budget:<5g} seed {seed}:"
        done, running = claim_cell(path, header, key)
        if done is not None:
            results["cells"][key] = done
            log(f"{step} done elsewhere")
            continue
        if running is not None:  # left to it; the merge at the end picks its cell up
            log(f"{step} running in process {running['pid']} on {running['host']}, left to it")
            continue
        try:  # released after the cell is written: who sees no claim sees the cell
            try:
                extra = {}
                if time_reference(method) is not None:  # random_blocks@dnis_ft
                    extra["time_budget"] = _matched_seconds(
                        path, header, results, method, budget, seed
                    )
                    if extra["time_budget"] is None:  # not recorded: a rerun will run it
                        ref = time_reference(method)
                        log(f"{step} left for later: the {ref} cell it matches has not run")
                        continue
                cell = run_method(method, dataset, model_name, config, budget, seed, **extra)
            except InfeasibleBudget as exc:
                # recorded, so a rerun does not retry it; left out of the tables
                cell = {"method": method, "budget": budget, "seed": seed, "skipped": str(exc)}
            results["cells"][key] = cell
            results = merge_results(path, header, results)
        finally:
            release_cell(path, key)
        if "skipped" in cell:
            log(f"{step} skipped: {cell['skipped']}")
        else:
            log(
                f"{step} test {metric} {cell['test'][metric]:.4f}  kept {cell['kept_params']:,}  "
                f"{cell['stored_bytes'] / 1e6:.2f} MB  {cell['seconds']:.0f}s"
            )
    clear_cache()  # the shared searches / uniform-K models of this comparison
    results = merge_results(path, header, results)  # what the other processes added since
    (out / "results.md").write_text(markdown_table(results, dataset.task, config.k))
    plot_results(results, dataset.task, config.k, out / "results.png")
    return results


def summarize(results: dict, task: str, k: int = 10) -> list[dict]:
    """One row per (method, budget): mean and std over seeds of every reported number."""
    groups: dict[tuple[str, float], list[dict]] = {}
    for cell in results["cells"].values():
        if "skipped" in cell:
            continue
        groups.setdefault((cell["method"], cell["budget"]), []).append(cell)
    rows = []
    for (method, budget), cells in sorted(groups.items(), key=lambda kv: (-kv[0][1], kv[0][0])):
        row = {"method": method, "budget": budget, "seeds": len(cells)}
        for name in cells[0]["test"]:
            vals = [c["test"][name] for c in cells]
            row[name] = (statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0)
        for name in ("kept_params", "stored_bytes", "seconds"):
            row[name] = statistics.fmean(c[name] for c in cells)
        rows.append(row)
    return rows


def markdown_table(results: dict, task: str, k: int = 10) -> str:
    rows = summarize(results, task, k)
    if not rows:
        return "no results yet\n"
    metrics = [m for m in rows[0] if isinstance(rows[0][m], tuple)]
    head = [
        "method",
        "budget",
        *[f"test {m}" for m in metrics],
        "kept params",
        "stored MB",
        "wall s",
        "seeds",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["method"], f"{r['budget']:g}"]
        cells += [f"{r[m][0]:.4f} ± {r[m][1]:.4f}" for m in metrics]
        cells += [
            f"{r['kept_params']:,.0f}",
            f"{r['stored_bytes'] / 1e6:.3f}",
            f"{r['seconds']:.0f}",
            str(r["seeds"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_results(results: dict, task: str, k: int, path: Path) -> bool:
    """PNG of the primary test metric vs stored bytes; False (with a RuntimeWarning, shown
    once) when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn(
            "matplotlib is not installed, so the plots are skipped (results.png, and on "
            "docs/results.md 'plot skipped' in place of each figure); `pip install matplotlib` "
            "(the extra 'plot') restores them",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    metric, _ = primary_metric(task, k)
    rows = summarize(results, task, k)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    # more methods than the default colour cycle: vary the marker and line style too
    styles = [(m, ls) for ls in ("-", "--", ":") for m in ("o", "s", "^", "D", "v", "x")]
    for i, method in enumerate(sorted({r["method"] for r in rows})):
        pts = sorted(
            (r["stored_bytes"], r[metric][0], r[metric][1]) for r in rows if r["method"] == method
        )
        ax.errorbar(
            [p[0] / 1e6 for p in pts],
            [p[1] for p in pts],
            yerr=[p[2] for p in pts],
            marker=styles[i % len(styles)][0],
            linestyle=styles[i % len(styles)][1],
            label=method,
            capsize=3,
        )
    ax.set_xscale("log")
    ax.set_xlabel("stored embedding bytes (MB, metadata included)")
    ax.set_ylabel(f"test {metric}")
    ax.legend(fontsize="small", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
