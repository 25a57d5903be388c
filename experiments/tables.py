"""The Markdown tables of the results page, each from one experiment's results.json dict.

``results``: ``{"dataset": ..., "model": ..., "config": {...}, "cells": {key: cell}}``,
a cell as :func:`mixemb.methods.run_method` returns it (or ``{"skipped": why, ...}``).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from experiments.presets import Preset
from mixemb.methods import summarize
from mixemb.metrics import primary_metric

WITHIN = 0.005  # "within 0.5 % (relative) of uniform-K", the yardstick


def md_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table: the header, its rule, one line per row; ends with a newline."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def done_cells(results: dict) -> list[dict]:
    return [c for c in results["cells"].values() if "skipped" not in c]


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def metric_table(results: dict, task: str, k: int, methods: Sequence[str]) -> str:
    """Methods × budgets: primary test metric mean ± std (n seeds), best mean in bold;
    then the stored MB of each."""
    metric, direction = primary_metric(task, k)
    rows = summarize(results, task, k)
    budgets = sorted({r["budget"] for r in rows}, reverse=True)
    order = [m for m in methods if any(r["method"] == m for r in rows)]
    order += sorted({r["method"] for r in rows} - set(order))
    by = {(r["method"], r["budget"]): r for r in rows}
    best = {}
    for b in budgets:
        vals = [by[m, b][metric][0] for m in order if (m, b) in by]
        best[b] = (min if direction == "min" else max)(vals) if vals else None
    unit = results.get("config", {}).get("budget_unit", "params")
    head = ["method"] + [f"{b:g}" for b in budgets]
    scores = []
    for m in order:
        row = [m]
        for b in budgets:
            r = by.get((m, b))
            if r is None:
                row.append("–")
                continue
            mean, std = r[metric]
            text = f"{mean:.4f} ± {std:.4f} ({r['seeds']})"
            row.append(f"**{text}**" if mean == best[b] else text)
        scores.append(row)
    stored = [
        [m] + [f"{by[m, b]['stored_bytes'] / 1e6:.3f}" if (m, b) in by else "–" for b in budgets]
        for m in order
    ]
    return (
        f"Test {metric} ({'lower' if direction == 'min' else 'higher'} is better), "
        "mean ± std over seeds (n); columns: budget as a fraction of the uniform-K "
        + ("dense fp32 bytes (ragged metadata included)." if unit == "bytes" else "parameters.")
        + " Stored MB in the next table.\n\n"
        + md_table(head, scores)
        + "\nStored embedding MB (mean over seeds):\n\n"
        + md_table(head, stored)
    )


def dnis_dims_table(results: dict) -> str:
    """Mean kept dimension per frequency block (block 0 = most frequent), from the search
    behind the ``dnis_ft`` cells (fine-tuning keeps DNIS's mask), or a plain ``dnis`` cell
    for a (budget, seed) without one: a later plain run's search may differ in the last
    bits, which training amplifies, and the table describes the headline variant's."""
    chosen: dict[tuple[float, int], dict] = {}
    for c in done_cells(results):
        key = (c["budget"], c["seed"])
        if c["method"] == "dnis_ft" or (c["method"] == "dnis" and key not in chosen):
            chosen[key] = c
    groups: dict[float, list[list[float]]] = {}
    alpha: list[list[float]] = []
    for (budget, _), c in chosen.items():
        groups.setdefault(budget, []).append(c["block_mean_dims"])
        alpha.append(c.get("alpha_mean", []))
    if not groups:
        return "no DNIS cells yet\n"
    nblocks = len(next(iter(groups.values()))[0])
    rows = [
        [f"{b:g}"] + [f"{statistics.fmean(x):.1f}" for x in zip(*groups[b])]
        for b in sorted(groups, reverse=True)
    ]
    alpha = [a for a in alpha if a]
    if alpha:
        rows.append(["α mean"] + [f"{statistics.fmean(x):.2f}" for x in zip(*alpha)])
    return md_table(["budget"] + [f"b{i}" for i in range(nblocks)], rows)


def total_seconds(results: dict, method: str) -> dict[int, float]:
    """Per seed, the summed wall time of ``method``'s cells (a grid's total), counting
    only seeds that ran as many budgets as the most complete one (a run may be unfinished)."""
    totals: dict[int, float] = {}
    counts: dict[int, int] = {}
    for c in done_cells(results):
        if c["method"] == method:
            totals[c["seed"]] = totals.get(c["seed"], 0.0) + c["seconds"]
            counts[c["seed"]] = counts.get(c["seed"], 0) + 1
    full = max(counts.values(), default=0)
    return {seed: t for seed, t in totals.items() if counts[seed] == full}


def search_seconds(results: dict, warm: bool = False) -> dict[int, float]:
    """Per seed, DNIS's search time: the mean over the searches that seed's ``dnis_ft``
    cells report (each process searches once, so cells run by several processes carry
    several), or over all its DNIS cells' searches when it has no ``dnis_ft`` cell (so a
    variant added later, by another process, does not change the time); with ``warm``,
    that of the full-warm-start variants (``dnis_warm*``, preferring ``dnis_warm_ft``)."""
    main = "dnis_warm_ft" if warm else "dnis_ft"
    found: dict[int, set[float]] = {}
    others: dict[int, set[float]] = {}
    for c in done_cells(results):
        if "search_seconds" in c and c["method"].startswith("dnis_warm") == warm:
            into = found if c["method"] == main else others
            into.setdefault(c["seed"], set()).add(c["search_seconds"])
    for seed, v in others.items():
        found.setdefault(seed, v)
    return {seed: statistics.fmean(v) for seed, v in found.items()}


def timing_table(results: dict) -> str:
    """DNIS search (warm start + search) vs the uniform grid's and random search's total
    training time, per seed (mean ± std over seeds)."""
    per_seed: dict[str, dict[int, float]] = {}
    for method, name in (("uniform", "uniform grid"), ("random", "random search")):
        totals = total_seconds(results, method)
        if totals:
            per_seed[f"{name} (all budgets, total)"] = totals
    searches = search_seconds(results)
    if searches:
        per_seed["DNIS search (warm start + search, once)"] = searches
    searches = search_seconds(results, warm=True)
    if searches:
        per_seed["DNIS with a full warm start (`dnis_warm*`: warm start + search, once)"] = searches
    if not per_seed:
        return "no timings yet\n"
    rows = []
    for name, d in per_seed.items():
        mean, std = _mean_std(list(d.values()))
        rows.append([name, f"{mean:.0f} ± {std:.0f}", str(len(d))])
    return md_table(["what", "seconds per seed", "seeds"], rows)


def time_matched_table(results: dict) -> str:
    """Per time-matched method (``random_blocks@dnis_ft``) and budget: the wall time it was
    given (its DNIS cell's), the time it used and its trials, per seed; "" if none ran."""
    groups: dict[tuple[str, float], list[dict]] = {}
    for c in done_cells(results):
        if "time_budget_seconds" in c:
            groups.setdefault((c["method"], c["budget"]), []).append(c)
    if not groups:
        return ""
    rows = []
    for (method, budget), cells in sorted(groups.items(), key=lambda kv: (kv[0][0], -kv[0][1])):
        cells.sort(key=lambda c: c["seed"])
        given = statistics.fmean(c["time_budget_seconds"] for c in cells)
        used = statistics.fmean(c["seconds"] for c in cells)
        trials = ", ".join(str(c["trials"]) for c in cells)
        rows.append([f"`{method}`", f"{budget:g}", f"{given:.0f}", f"{used:.0f}", trials])
    head = ["method", "budget", "seconds given (DNIS's)", "seconds used", "trials (per seed)"]
    return md_table(head, rows)


def smallest_budgets(results: dict, task: str, k: int) -> dict[str, tuple | None]:
    """Per method: (budget, mean, n) of the smallest budget b at which the method *stays*
    within WITHIN (relative) of uniform at budget 1 — its mean at b and at every larger
    budget it ran is no worse than that — or None if not even its largest budget is.
    Empty without a uniform budget-1 cell."""
    metric, direction = primary_metric(task, k)
    by = {(r["method"], r["budget"]): r for r in summarize(results, task, k)}
    ref = by.get(("uniform", 1.0))
    if ref is None:
        return {}
    limit = ref[metric][0] * (1 + WITHIN if direction == "min" else 1 - WITHIN)

    def ok(mean: float) -> bool:
        return mean <= limit if direction == "min" else mean >= limit

    out: dict[str, tuple | None] = {}
    for m in sorted({m for m, _ in by}):
        best = None
        for b in sorted((b for mm, b in by if mm == m), reverse=True):
            if not ok(by[m, b][metric][0]):
                break
            best = (b, by[m, b][metric][0], by[m, b]["seeds"])
        out[m] = best
    return out


def _search_vs_grid(results: dict) -> str:
    search, grid = search_seconds(results), total_seconds(results, "uniform")
    if not search or not grid:
        return "–"
    s, g = statistics.fmean(search.values()), statistics.fmean(grid.values())
    return f"{s:.0f} s vs {g:.0f} s (" + (
        f"{g / s:.1f}× less)" if g >= s else f"{s / g:.1f}× more)"
    )


def summary_table(results: dict[str, dict], preset: Preset) -> str:
    """One row per experiment: uniform-K's test metric, the smallest budget at which DNIS
    (fine-tuned, and its best variant) and the best baseline stay within 0.5 % of it, and
    DNIS's search time vs the uniform grid's total."""

    def fmt(hit: tuple | None) -> str:
        return "never" if hit is None else f"{hit[0]:.0%} ({hit[1]:.4f}, n={hit[2]})"

    def smallest(hits: dict[str, tuple | None], names: list[str]) -> str:
        found = [(hits[m][0], m) for m in names if hits.get(m) is not None]
        if not found:
            return "never" if names else "–"
        b = min(found)[0]
        return (
            fmt(hits[min(m for bb, m in found if bb == b)])
            + ": "
            + ", ".join(f"`{m}`" for bb, m in sorted(found) if bb == b)
        )

    head = [
        "experiment",
        "metric",
        "uniform-K",
        "DNIS (`dnis_ft`)",
        "best DNIS variant",
        "best baseline",
        "DNIS search vs grid",
    ]
    rows = []
    for exp in preset.experiments:
        res = results.get(exp.name)
        if res is None:
            continue
        k = res.get("config", {}).get("k", 10)
        metric, _ = primary_metric(exp.task, k)
        hits = smallest_budgets(res, exp.task, k)
        if not hits:
            continue
        ref = next(
            r for r in summarize(res, exp.task, k) if (r["method"], r["budget"]) == ("uniform", 1.0)
        )
        dnis = sorted(m for m in hits if m.startswith("dnis"))
        base = sorted(m for m in hits if not m.startswith("dnis"))
        rows.append(
            [
                exp.name,
                metric,
                f"{ref[metric][0]:.4f} (n={ref['seeds']})",
                fmt(hits["dnis_ft"]) if "dnis_ft" in hits else "–",
                smallest(hits, dnis),
                smallest(hits, base),
                _search_vs_grid(res),
            ]
        )
    return md_table(head, rows)
