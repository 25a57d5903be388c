"""``mixemb compare``: methods over budgets and seeds, one result cell each, resumable.

Every finished cell (method, budget, seed) is written to ``results.json`` at once
(atomically); a rerun skips cells already there, so a killed comparison continues where
it stopped. A time-matched cell (``random_blocks@dnis_ft``) runs after, and for the wall
time of, the cell it matches. ``results.md`` (mean ± std over seeds) and, when
matplotlib is installed, ``results.png`` (test metric vs stored bytes) are rewritten
from ``results.json``.

Where the cells live is a :class:`ResultsStore`: one process per ``results.json`` by
default; a store shared by several processes (locking, claims of running cells) plugs
in through ``compare(..., store=...)``.
"""

from __future__ import annotations

import json
import statistics
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from pathlib import Path

from mixemb.data.schema import Dataset
from mixemb.methods.base import (
    METHODS,
    InfeasibleBudget,
    dnis_wall_seconds,
    parse_method,
    run_method,
    time_reference,
    valid_names,
)
from mixemb.methods.config import MethodConfig
from mixemb.methods.shared import clear_cache
from mixemb.metrics import primary_metric
from mixemb.train.checkpoint import write_json


def cell_key(method: str, budget: float, seed: int) -> str:
    """The key of a cell in ``results.json``'s "cells": ``"method|budget|seed"``."""
    return f"{method}|{budget:g}|{seed}"


def plan_cells(
    methods: Iterable[str], budgets: Sequence[float], seeds: Sequence[int]
) -> list[tuple[str, float, int]]:
    """The (method, budget, seed) cells a comparison runs, in the order it runs them:
    ``uniform`` at budget 1.0 (the uniform-K reference) for every seed first, then seed by
    seed. Seed-major, so a seed's DNIS search and uniform-K model are trained once and
    reused by all its budgets and variants (see :mod:`mixemb.methods.shared`), and a
    partial run already holds whole curves for its first seeds; time-matched methods
    (``random…@m``) come after the cells of m whose wall time they take."""
    plan = [("uniform", 1.0, s) for s in seeds]
    ordered = sorted(methods, key=lambda m: time_reference(m) is not None)
    plan += [
        (m, b, s) for s in seeds for b in budgets for m in ordered if (m, b) != ("uniform", 1.0)
    ]
    return plan


def load_results(path: Path, header: dict) -> dict:
    """Existing results for the same experiment (``header``: dataset, model, config), or
    a fresh container; ValueError when ``path`` holds another experiment."""
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


class ResultsStore:
    """The cells of one comparison in ``path`` (``results.json``), for one process.

    A store shared by several processes subclasses it: ``take`` may report a cell
    another process finished or is running, ``record`` and ``sync`` merge with what is
    on disk, ``lookup`` reads it too, ``release`` drops this process's hold on a cell.
    """

    def __init__(self, path: Path, header: dict) -> None:
        self.path, self.header = Path(path), header

    def load(self) -> dict:
        """The results so far (``load_results``)."""
        return load_results(self.path, self.header)

    def take(self, key: str) -> tuple[dict | None, str | None]:
        """Before cell ``key`` runs: (its cell, None) when it is finished elsewhere,
        (None, who runs it) when it is left to someone else, (None, None) to run it."""
        return None, None

    def release(self, key: str) -> None:
        """After cell ``key`` ran (or failed)."""

    def record(self, results: dict) -> dict:
        """Write ``results`` (atomically) after a cell finished; returns the results."""
        write_json(results, self.path)
        return results

    def lookup(self, results: dict, key: str) -> dict | None:
        """Cell ``key`` if it has finished (a time-matched cell reads its reference)."""
        return results["cells"].get(key)

    def sync(self, results: dict) -> dict:
        """Write the results once every cell of this process ran; returns them."""
        return self.record(results)


def _matched_seconds(store: ResultsStore, results: dict, method: str, budget, seed):
    """The wall time a time-matched ``method`` gets at (budget, seed): that of its
    reference cell (:func:`dnis_wall_seconds`); None while that cell has not run.
    Raises InfeasibleBudget when it was skipped."""
    ref = time_reference(method)
    cell = store.lookup(results, cell_key(ref, budget, seed))
    if cell is not None and "skipped" in cell:
        raise InfeasibleBudget(f"the {ref} cell it matches was skipped: {cell['skipped']}")
    return None if cell is None else dnis_wall_seconds(cell)


def compare(
    dataset: Dataset,
    spec: dict,
    model_name: str,
    config: MethodConfig,
    *,
    methods: Iterable[str] = METHODS,
    budgets: Sequence[float] = (0.5, 0.2, 0.05),
    seeds: Sequence[int] = (0, 1, 2),
    out: str | Path = "runs/compare",
    log: Callable[[str], None] = print,
    store: Callable[[Path, dict], ResultsStore] = ResultsStore,
) -> dict:
    """Run every missing cell, then write results.json / results.md / results.png in ``out``.

    methods: registered names (default: all), with their ``@`` arguments. The uniform-K
    reference (``uniform`` at budget 1.0) is always included. store: builds the
    :class:`ResultsStore` from (``out``/results.json, header).
    """
    methods = list(methods)
    unknown = []
    for m in methods:
        try:
            parse_method(m)
        except ValueError:
            unknown.append(m)
    if unknown:
        raise ValueError(f"unknown methods {unknown}; valid: {valid_names()}")
    out = Path(out)
    header = {"dataset": spec, "model": model_name, "config": asdict(config)}
    cells = store(out / "results.json", header)
    results = cells.load()
    plan = plan_cells(methods, budgets, seeds)
    todo = [p for p in plan if cell_key(*p) not in results["cells"]]
    log(f"compare: {len(plan)} cells, {len(plan) - len(todo)} already done")
    metric, _ = primary_metric(dataset.task, config.k)
    for i, (method, budget, seed) in enumerate(todo, 1):
        key = cell_key(method, budget, seed)
        step = f"[{i}/{len(todo)}] {method:9s} budget {budget:<5g} seed {seed}:"
        done, running = cells.take(key)
        if done is not None:
            results["cells"][key] = done
            log(f"{step} done elsewhere")
            continue
        if running is not None:  # left to it; sync picks its cell up
            log(f"{step} {running}, left to it")
            continue
        try:  # released after the cell is written: who sees no hold sees the cell
            try:
                extra = {}
                if time_reference(method) is not None:  # random_blocks@dnis_ft
                    extra["time_budget"] = _matched_seconds(cells, results, method, budget, seed)
                    if extra["time_budget"] is None:  # not recorded: a rerun will run it
                        ref = time_reference(method)
                        log(f"{step} left for later: the {ref} cell it matches has not run")
                        continue
                cell = run_method(method, dataset, model_name, config, budget, seed, **extra)
            except InfeasibleBudget as exc:
                # recorded, so a rerun does not retry it; left out of the tables
                cell = {"method": method, "budget": budget, "seed": seed, "skipped": str(exc)}
            results["cells"][key] = cell
            results = cells.record(results)
        finally:
            cells.release(key)
        if "skipped" in cell:
            log(f"{step} skipped: {cell['skipped']}")
        else:
            log(
                f"{step} test {metric} {cell['test'][metric]:.4f}  kept {cell['kept_params']:,}  "
                f"{cell['stored_bytes'] / 1e6:.2f} MB  {cell['seconds']:.0f}s"
            )
    clear_cache()  # the shared searches / uniform-K models of this comparison
    results = cells.sync(results)
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
    """results.md: one row per (method, budget), test metrics as mean ± std over seeds."""
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
