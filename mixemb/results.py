"""``python -m mixemb.results`` (``make results``): the experiments behind docs/results.md.

For every (data, task, model) combination of a preset it runs what ``mixemb compare`` runs
— every (method, budget, seed) cell, saved to ``OUT/<name>/results.json`` as it finishes,
so a killed run resumes where it stopped — then writes the report (default
``docs/results.md``, plots in ``docs/results/``) from those files alone. ``OUT`` defaults to
``docs/results/cells``, which is committed with the page: a fresh clone can rewrite the page
(``--report-only``) or add cells to it without rerunning the rest:

* per combination, the primary test metric, mean ± std over seeds, per method and budget;
  budgets are fractions of the uniform-K table's dense fp32 bytes, and ragged tables pay
  their metadata out of them (``budget_unit="bytes"``), so a column is *equal stored
  bytes*;
* a plot of the metric vs stored bytes (when matplotlib is installed);
* DNIS's learned dimension per frequency block;
* DNIS's search time vs the uniform grid's (and random search's) total training time;
* the exact commands, the machine, torch's version and the git commit.

An experiment with no cells under ``OUT`` keeps its section (and summary row) from the page
being replaced, marked as carried over, so ``--only`` regenerates one experiment without
dropping the others; the page's first paragraph lists those sections. A carried-over section
stays carried over (its mark counts the cells done) until a rerun under ``OUT`` has every
cell the preset plans for it, so a long rerun can be committed seed by seed, over several
sessions, without replacing a complete section with a partial one.

Presets: ``quick`` (the six ML-1M combinations and rating FM with side fields, 3 seeds,
fewer methods for all but rating MF; hours on 2 CPU cores; ``--only`` one experiment per
process, or ``--seeds`` one seed per process on the same ``--out``, to use more cores),
``full`` (the six combinations of the issue), chosen with ``--preset`` or the
``RESULTS_PRESET`` environment variable.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from mixemb.metrics import primary_metric
from mixemb.search.compare import cell_key, compare, plan_cells, plot_results, summarize
from mixemb.search.methods import MethodConfig
from mixemb.train.checkpoint import atomic_write_text

BUDGETS = (1.0, 0.5, 0.2, 0.1, 0.05)
ALL_METHODS = (
    "uniform",
    "dnis",
    "dnis_ft",
    "dnis_rot",
    "dnis_rot_ft",
    "dnis_warm_ft",
    "magnitude",
    "magnitude_ft",
    "magnitude_rot_ft",
    "mde@0",
    "mde@0.3",
    "mde@0.5",
    "mde_blocks@0.3",
    "random",
    "random_blocks@dnis_ft",
)

# DNIS (without and with fine-tuning), the uniform grid, and the two baselines that cost
# one or five trainings
CORE = ["uniform", "dnis", "dnis_ft", "magnitude_ft", "mde@0.3"]
# the models where rotation is not exact (NeuMF, DeepFM): dnis_aligned_ft asks whether the
# chance overlap of element-wise pruned dims is what DNIS loses to there; dnis_floor_ft
# whether it is the features left with no dimension at all; MDE's other two exponents of
# the issue last (added after the rest had run)
NOT_ROTATABLE = [
    *CORE,
    "dnis_aligned_ft",
    "dnis_floor_ft",
    "mde_blocks@0.3",
    "random",
    "random_blocks@dnis_ft",
    "dnis_blocks",
    "mde@0",
    "mde@0.5",
]


@dataclass
class Experiment:
    """One (data, task, model) combination and the settings of its cells."""

    name: str
    data: str
    task: str
    model: str
    model_kwargs: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)  # MethodConfig overrides
    methods: list[str] | None = None  # None: the preset's
    data_kwargs: dict = field(default_factory=dict)  # load_dataset options, e.g. side_fields


@dataclass
class Preset:
    experiments: list[Experiment]
    seeds: list[int]
    budgets: list[float] = field(default_factory=lambda: list(BUDGETS))
    methods: list[str] = field(default_factory=lambda: list(ALL_METHODS))
    config: dict = field(default_factory=dict)  # MethodConfig overrides for every experiment


PRESETS = {
    # fewer methods where a model is slow (hours a seed on one core):
    # - plain DNIS is the only un-fine-tuned variant outside MF;
    # - the three MDE exponents of the issue run on every combination of the issue; FM with
    #   side fields, not one of the issue's, has none stored ragged;
    # - mde_blocks@0.3 (MDE without the ragged masks' bytes) everywhere;
    # - random_blocks@dnis_ft (random search at DNIS's wall time) on all but rating FM
    #   (= MF), and on top-k NeuMF instead of the fixed-trial `random` (two ~500 s
    #   trainings a cell there);
    # - dnis_blocks on rating NeuMF, DeepFM and FM with side fields
    "quick": Preset(
        experiments=[
            Experiment("ml1m-rating-mf", "movielens-1m", "rating", "mf"),
            Experiment(
                "ml1m-ctr-fm",
                "movielens-1m",
                "ctr",
                "fm",
                methods=[
                    "uniform",
                    "dnis",
                    "dnis_ft",
                    "dnis_rot_ft",
                    "magnitude_ft",
                    "magnitude_rot_ft",
                    "mde@0",
                    "mde@0.3",
                    "mde@0.5",
                    "mde_blocks@0.3",
                    "random",
                    "random_blocks@dnis_ft",
                ],
            ),  # fmt: skip
            # top-k NeuMF trains on 5 samples per positive (4 sampled negatives): with
            # 4096-sample batches, at most 8 epochs and 3 fine-tuning epochs an epoch is
            # ~50 s on one core
            Experiment(
                "ml1m-topk-neumf",
                "movielens-1m",
                "topk",
                "neumf",
                config={
                    "batch_size": 4096,
                    "lr": 2e-3,
                    "epochs": 8,
                    "patience": 1,
                    "finetune_epochs": 3,
                },
                # dnis_warm_ft: the validation ablation (docs/results.md) found the 2-epoch
                # warm start, not α's selection, behind plain DNIS's loss on this task
                methods=[
                    "uniform",
                    "dnis",
                    "dnis_ft",
                    "dnis_warm_ft",
                    "magnitude_ft",
                    "mde@0.3",
                    "mde_blocks@0.3",
                    "random_blocks@dnis_ft",
                    "mde@0",
                    "mde@0.5",
                ],
            ),
            # the other three combinations of the issue, with the four methods that answer
            # "DNIS vs the grid and the two cheap baselines at equal bytes", then random
            # search (last: it costs about as much as the other four together)
            Experiment(
                "ml1m-rating-neumf",
                "movielens-1m",
                "rating",
                "neumf",
                methods=NOT_ROTATABLE,
            ),
            Experiment(
                "ml1m-rating-fm",
                "movielens-1m",
                "rating",
                "fm",
                methods=[
                    *CORE,
                    "dnis_rot_ft",
                    "magnitude_rot_ft",
                    "dnis_warm_ft",
                    "mde_blocks@0.3",
                    "random",
                ],
            ),
            # rating FM on user and item alone is MF with biases (the cells agree to 3e-6);
            # with the side fields CTR uses, it is a different model
            Experiment(
                "ml1m-rating-fm-side",
                "movielens-1m",
                "rating",
                "fm",
                data_kwargs={"side_fields": True},
                methods=[
                    "uniform",
                    "dnis",
                    "dnis_ft",
                    "dnis_rot_ft",
                    "magnitude_ft",
                    "mde_blocks@0.3",
                    "random_blocks@dnis_ft",
                    "dnis_blocks",
                ],
            ),
            Experiment(
                "ml1m-ctr-deepfm",
                "movielens-1m",
                "ctr",
                "deepfm",
                methods=NOT_ROTATABLE,
            ),
        ],
        seeds=[0, 1, 2],
        config={"random_trials": 3},
    ),
    "full": Preset(
        experiments=[
            Experiment("ml1m-rating-mf", "movielens-1m", "rating", "mf"),
            Experiment("ml1m-rating-neumf", "movielens-1m", "rating", "neumf"),
            Experiment("ml1m-rating-fm", "movielens-1m", "rating", "fm"),
            Experiment("ml1m-ctr-fm", "movielens-1m", "ctr", "fm"),
            Experiment("ml1m-ctr-deepfm", "movielens-1m", "ctr", "deepfm"),
            Experiment("ml1m-topk-neumf", "movielens-1m", "topk", "neumf"),
        ],
        seeds=[0, 1, 2],
    ),
}


def method_config(preset: Preset, exp: Experiment) -> MethodConfig:
    return MethodConfig(
        **{
            "budget_unit": "bytes",
            **preset.config,
            **exp.config,
            "model_kwargs": dict(exp.model_kwargs),
        }
    )


def compare_command(preset: Preset, exp: Experiment, out: Path) -> str:
    """The ``mixemb compare`` command line that runs the same cells."""
    cfg = method_config(preset, exp)
    args = [
        "mixemb",
        "compare",
        "--data",
        exp.data,
        "--task",
        exp.task,
        "--model",
        exp.model,
        "--dim",
        str(cfg.dim),
        "--blocks",
        str(cfg.num_blocks),
        "--epochs",
        str(cfg.epochs),
        "--patience",
        str(cfg.patience),
        "--lr",
        f"{cfg.lr:g}",
        "--batch-size",
        str(cfg.batch_size),
        "--warmup-epochs",
        str(cfg.warmup_epochs),
        "--search-epochs",
        str(cfg.search_epochs),
        "--alpha-lr",
        f"{cfg.alpha_lr:g}",
        "--l1",
        f"{cfg.l1:g}",
        "--finetune-epochs",
        str(cfg.finetune_epochs),
        "--random-trials",
        str(cfg.random_trials),
        "--mde-exponent",
        f"{cfg.mde_exponent:g}",
        "--budget-unit",
        cfg.budget_unit,
        "--methods",
        ",".join(exp.methods or preset.methods),
        "--budgets",
        ",".join(f"{b:g}" for b in preset.budgets),
        "--seeds",
        ",".join(map(str, preset.seeds)),
        "--out",
        str(out / exp.name),
    ]
    if "hidden" in exp.model_kwargs:
        args += ["--hidden", ",".join(map(str, exp.model_kwargs["hidden"]))]
    if exp.data_kwargs.get("side_fields"):
        args.insert(args.index("--model"), "--side-fields")
    return shlex.join(args)


def run_preset(
    preset: Preset,
    out: Path,
    *,
    only: Sequence[str] = (),
    load: Callable[[dict], object] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, dict]:
    """Run (or resume) every experiment of ``preset``; returns name → results.json dict."""
    from mixemb.train.run import load_from_spec

    load = load or load_from_spec
    results = {}
    for exp in preset.experiments:
        if only and exp.name not in only:
            continue
        spec = {"name": exp.data, "task": exp.task, "seed": 0, "min_count": 1, **exp.data_kwargs}
        log(f"== {exp.name}: {exp.data} {exp.task} {exp.model} -> {out / exp.name}")
        results[exp.name] = compare(
            load(spec),
            spec,
            exp.model,
            method_config(preset, exp),
            methods=exp.methods or preset.methods,
            budgets=[b for b in preset.budgets],
            seeds=preset.seeds,
            out=out / exp.name,
            log=log,
        )
    return results


# ---- the report -------------------------------------------------------------------------


def machine_info() -> dict[str, str]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], capture_output=True, text=True, check=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "HEAD") or "unknown"
    if git("status", "--porcelain", "--untracked-files=no"):
        commit += " (with uncommitted changes)"
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {
        "cpu count": str(os.cpu_count()),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch threads": str(torch.get_num_threads()),
        "GPU": cuda,
        "git commit": commit,
    }


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def _cells(results: dict) -> list[dict]:
    return [c for c in results["cells"].values() if "skipped" not in c]


def metric_table(results: dict, task: str, k: int, methods: Sequence[str]) -> str:
    """Methods × budgets: primary test metric mean ± std (n seeds); best mean in bold."""
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
    lines = [
        f"Test {metric} ({'lower' if direction == 'min' else 'higher'} is better), "
        f"mean ± std over seeds (n); columns: budget as a fraction of the uniform-K "
        + ("dense fp32 bytes (ragged metadata included)." if unit == "bytes" else "parameters.")
        + " Stored MB in the next table.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for m in order:
        cells = [m]
        for b in budgets:
            r = by.get((m, b))
            if r is None:
                cells.append("–")
                continue
            mean, std = r[metric]
            text = f"{mean:.4f} ± {std:.4f} ({r['seeds']})"
            cells.append(f"**{text}**" if mean == best[b] else text)
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Stored embedding MB (mean over seeds):", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in order:
        cells = [m] + [
            f"{by[m, b]['stored_bytes'] / 1e6:.3f}" if (m, b) in by else "–" for b in budgets
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def dnis_dims_table(results: dict) -> str:
    """Mean kept dimension per frequency block (block 0 = most frequent), from the search
    behind the ``dnis_ft`` cells (fine-tuning keeps DNIS's mask), or a plain ``dnis`` cell
    for a (budget, seed) without one: a later plain run's search may differ in the last
    bits, which training amplifies, and the table describes the headline variant's."""
    chosen: dict[tuple[float, int], dict] = {}
    for c in _cells(results):
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
    head = ["budget"] + [f"b{i}" for i in range(nblocks)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for b in sorted(groups, reverse=True):
        cols = list(zip(*groups[b]))
        lines.append(f"| {b:g} | " + " | ".join(f"{statistics.fmean(x):.1f}" for x in cols) + " |")
    alpha = [a for a in alpha if a]
    if alpha:
        cols = list(zip(*alpha))
        lines.append("| α mean | " + " | ".join(f"{statistics.fmean(x):.2f}" for x in cols) + " |")
    return "\n".join(lines) + "\n"


def _total_seconds(results: dict, method: str) -> dict[int, float]:
    """Per seed, the summed wall time of ``method``'s cells (a grid's total), counting
    only seeds that ran as many budgets as the most complete one (a run may be unfinished)."""
    totals: dict[int, float] = {}
    counts: dict[int, int] = {}
    for c in _cells(results):
        if c["method"] == method:
            totals[c["seed"]] = totals.get(c["seed"], 0.0) + c["seconds"]
            counts[c["seed"]] = counts.get(c["seed"], 0) + 1
    full = max(counts.values(), default=0)
    return {seed: t for seed, t in totals.items() if counts[seed] == full}


def timing_table(results: dict) -> str:
    """DNIS search (warm start + search) vs the uniform grid's and random search's total
    training time, per seed (mean ± std over seeds)."""
    per_seed: dict[str, dict[int, float]] = {}
    for method, name in (("uniform", "uniform grid"), ("random", "random search")):
        totals = _total_seconds(results, method)
        if totals:
            per_seed[f"{name} (all budgets, total)"] = totals
    searches = _search_seconds(results)
    if searches:
        per_seed["DNIS search (warm start + search, once)"] = searches
    searches = _search_seconds(results, warm=True)
    if searches:
        per_seed["DNIS with a full warm start (`dnis_warm*`: warm start + search, once)"] = searches
    if not per_seed:
        return "no timings yet\n"
    lines = ["| what | seconds per seed | seeds |", "|---|---|---|"]
    for name, d in per_seed.items():
        mean, std = _mean_std(list(d.values()))
        lines.append(f"| {name} | {mean:.0f} ± {std:.0f} | {len(d)} |")
    return "\n".join(lines) + "\n"


def time_matched_table(results: dict) -> str:
    """Per time-matched method (``random_blocks@dnis_ft``) and budget: the wall time it was
    given (its DNIS cell's), the time it used and its trials, per seed; "" if none ran."""
    groups: dict[tuple[str, float], list[dict]] = {}
    for c in _cells(results):
        if "time_budget_seconds" in c:
            groups.setdefault((c["method"], c["budget"]), []).append(c)
    if not groups:
        return ""
    lines = [
        "| method | budget | seconds given (DNIS's) | seconds used | trials (per seed) |",
        "|---|---|---|---|---|",
    ]
    for (method, budget), cells in sorted(groups.items(), key=lambda kv: (kv[0][0], -kv[0][1])):
        cells.sort(key=lambda c: c["seed"])
        given = statistics.fmean(c["time_budget_seconds"] for c in cells)
        used = statistics.fmean(c["seconds"] for c in cells)
        trials = ", ".join(str(c["trials"]) for c in cells)
        lines.append(f"| `{method}` | {budget:g} | {given:.0f} | {used:.0f} | {trials} |")
    return "\n".join(lines) + "\n"


WITHIN = 0.005  # "within 0.5 % (relative) of uniform-K", the yardstick

CARRIED = "carried over"  # the mark of a section kept from the page being replaced
_MARK = f"> *{CARRIED.capitalize()}*"  # how the line under such a section's heading starts


def carried_mark(name: str, out: Path, progress: tuple[int, int] | None = None) -> str:
    """The line under a carried-over section's heading; ``progress`` = (cells done,
    cells planned) of an unfinished rerun under ``out``, None when it has no cells."""
    rerun = f"`python -m mixemb.results --only {name} --out {out}`"
    if progress is None:
        return (
            f"{_MARK} from the page this report replaced: there are no cells "
            f"for {name} under `{out}`, so the figures below are not from this run (not "
            f"regenerated). {rerun} reruns it."
        )
    return (
        f"{_MARK} from the page this report replaced: the rerun of {name} under `{out}` "
        f"is not finished ({progress[0]} of {progress[1]} planned cells), so the figures "
        f"below are not from it; the section is regenerated when it is. {rerun} finishes it."
    )


def rerun_progress(results: dict, exp: Experiment, preset: Preset) -> tuple[int, int]:
    """(cells done, cells planned) of ``exp`` under ``preset``: the planned cells that
    ``results`` holds, run or recorded as skipped."""
    plan = plan_cells(exp.methods or preset.methods, preset.budgets, preset.seeds)
    planned = {cell_key(*c) for c in plan}
    have = {cell_key(c["method"], c["budget"], c["seed"]) for c in results["cells"].values()}
    return len(planned & have), len(planned)


def page_sections(page: str) -> dict[str, list[str]]:
    """An earlier page's experiment sections: name → its lines, from its ``## name: …``
    heading up to the next ``## `` heading (the page's own sections are not experiments:
    Machine, Commands, Summary)."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in page.splitlines():
        if line.startswith("## "):
            name, colon, _ = line[3:].partition(":")
            current = sections[name.strip()] = [] if colon else None
        if current is not None:
            current.append(line)
    return sections


def page_summary_rows(page: str) -> dict[str, str]:
    """An earlier page's summary table rows: experiment name → the row (its name cell
    without the carried-over mark)."""
    rows: dict[str, str] = {}
    summary = page.split("\n## Summary\n", 1)[-1].split("\n## ", 1)[0]
    for line in summary.splitlines():
        if line.startswith("| ") and line.count("|") > 2:
            name = line[2:].split(" |", 1)[0].replace(f" ({CARRIED})", "").strip()
            rows[name] = line
    return rows


def carry_section(
    lines: list[str], name: str, out: Path, progress: tuple[int, int] | None = None
) -> list[str]:
    """A section kept from an earlier page: its heading, the carried-over mark (replacing
    an earlier one; ``progress`` as in carried_mark) and its body unchanged."""
    body = [x for x in lines[1:] if not x.startswith(_MARK)]
    while body and not body[0].strip():
        body = body[1:]
    return [lines[0], "", carried_mark(name, out, progress), "", *body]


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


def _search_seconds(results: dict, warm: bool = False) -> dict[int, float]:
    """Per seed, DNIS's search time: the mean over the searches that seed's ``dnis_ft``
    cells report (each process searches once, so cells run by several processes carry
    several), or over all its DNIS cells' searches when it has no ``dnis_ft`` cell (so a
    variant added later, by another process, does not change the time); with ``warm``,
    that of the full-warm-start variants (``dnis_warm*``, preferring ``dnis_warm_ft``)."""
    main = "dnis_warm_ft" if warm else "dnis_ft"
    found: dict[int, set[float]] = {}
    others: dict[int, set[float]] = {}
    for c in _cells(results):
        if "search_seconds" in c and c["method"].startswith("dnis_warm") == warm:
            into = found if c["method"] == main else others
            into.setdefault(c["seed"], set()).add(c["search_seconds"])
    for seed, v in others.items():
        found.setdefault(seed, v)
    return {seed: statistics.fmean(v) for seed, v in found.items()}


def _search_vs_grid(results: dict) -> str:
    search, grid = _search_seconds(results), _total_seconds(results, "uniform")
    if not search or not grid:
        return "–"
    s, g = statistics.fmean(search.values()), statistics.fmean(grid.values())
    return f"{s:.0f} s vs {g:.0f} s (" + (
        f"{g / s:.1f}× less)" if g >= s else f"{s / g:.1f}× more)"
    )


def summary_table(
    results: dict[str, dict], preset: Preset, carried: dict[str, str] | None = None
) -> str:
    """One row per experiment: uniform-K's test metric, the smallest budget at which DNIS
    (fine-tuned, and its best variant) and the best baseline stay within 0.5 % of it, and
    DNIS's search time vs the uniform grid's total. ``carried``: experiment name → its row
    on an earlier page, used (marked as carried over) where ``results`` lacks it."""
    carried = carried or {}

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
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for exp in preset.experiments:
        res = results.get(exp.name)
        if res is None:
            if exp.name in carried:
                row = carried[exp.name]
                lines.append(row.replace(f"| {exp.name} |", f"| {exp.name} ({CARRIED}) |", 1))
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
        lines.append(
            "| "
            + " | ".join(
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
            + " |"
        )
    return "\n".join(lines) + "\n"


def write_report(
    results: dict[str, dict],
    preset: Preset,
    preset_name: str,
    out: Path,
    doc: Path,
    *,
    command: str,
    wall_seconds: float | None = None,
    note: str = "",
) -> Path:
    """Write ``doc`` (markdown) and its plots in ``doc.parent / 'results'`` from
    ``results`` (name → results.json dict) alone."""
    fig_dir = doc.parent / "results"
    info = machine_info()
    previous = doc.read_text() if doc.exists() else ""
    sections = page_sections(previous)
    # a carried-over section stays carried over until its rerun has every planned cell, so
    # a rerun split over sessions (its cells committed as they finish) does not replace a
    # complete section with a partial one
    progress = {}
    for e in preset.experiments:
        if e.name in results and any(x.startswith(_MARK) for x in sections.get(e.name, [])):
            done, planned = rerun_progress(results[e.name], e, preset)
            if done < planned:
                progress[e.name] = (done, planned)
    carried = [
        e.name
        for e in preset.experiments
        if e.name in sections and (e.name not in results or e.name in progress)
    ]
    results = {n: r for n, r in results.items() if n not in carried}
    provenance = (
        f"Every number below comes from the cells in `{out}/<name>/results.json` of that run"
    )
    if carried:
        provenance += (
            f", except in the sections marked *{CARRIED}* ({', '.join(carried)}), which have no "
            f"cells there{' (or an unfinished rerun)' if progress else ''} and are kept "
            "unchanged from the page this one replaced; rerunning resumes the run and "
            "regenerates them."
        )
    else:
        provenance += "; rerunning resumes it."
    lines = [
        "# Results: DNIS vs baselines at equal stored bytes",
        "",
        f"Written by `{command}` (preset `{preset_name}`) on "
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}. {provenance}",
        "",
        "Methods: `uniform` = the grid over one dimension d = ⌊budget·K⌋ (dense table); "
        "`dnis` / `dnis_ft` = DNIS as in docs (element-wise magnitude pruning of E ⊙ α, "
        "then fine-tuning with the mask fixed); `dnis_rot*` = DNIS with Ê rotated onto its "
        "singular vectors before pruning (MF/FM only); `dnis_aligned*` = DNIS's per-feature "
        "dimensions kept at one column order shared by every feature (so two features' kept "
        "dims overlap); `dnis_floor*` = DNIS's element-wise pruning in which every feature "
        "first keeps its largest entry (none is left without a dimension); `dnis_warm*` = "
        "DNIS whose warm start "
        "is the plain trainer's whole schedule (early-stopped), not `warmup_epochs`; "
        "`magnitude*` = pruning a trained "
        "uniform-K model; `mde@a` = MDE with exponent a; `random` = random search over "
        "block dims (both stored ragged, paying 8.5 B of masks per row at K=64); "
        "`mde_blocks@a` / `random_blocks` = the same stored as one dense table per block "
        "(no per-row metadata); `dnis_blocks` = DNIS's mean kept dimension per block, scaled to "
        "the budget, trained and stored like `mde_blocks`; `random_blocks@dnis_ft` = "
        "`random_blocks` given the wall time `dnis_ft` took at the same budget and seed (its "
        "search plus that budget's prune and fine-tune) instead of a fixed number of trials. "
        "Selection on validation only; the test split is only reported.",
        "",
        *([note, ""] if note else []),
        "## Machine",
        "",
        *[f"- {k}: {v}" for k, v in info.items()],
    ]
    if wall_seconds is not None:
        lines.append(f"- wall time of this invocation: {wall_seconds:.0f} s")
    lines += ["", "## Commands", "", "```", command]
    for exp in preset.experiments:
        if exp.name in results or exp.name in carried:
            lines.append(compare_command(preset, exp, out))
    lines += ["```", ""]
    lines += [
        "## Summary",
        "",
        f"Smallest budget (fraction of uniform-K's bytes) at which a method stays within "
        f"{WITHIN:.1%} (relative) of uniform-K's test metric — at that budget and every larger "
        "one it ran; means over seeds, n = seeds of that cell. `uniform` at budget 1 is "
        "uniform-K itself, so the uniform grid's own entry is the smallest smaller "
        "dimension that holds up.",
        "",
        summary_table(
            results,
            preset,
            {n: row for n, row in page_summary_rows(previous).items() if n in carried},
        ),
    ]
    for exp in preset.experiments:
        if exp.name in carried:
            lines += carry_section(sections[exp.name], exp.name, out, progress.get(exp.name))
            continue
        if exp.name not in results:
            continue
        res = results[exp.name]
        k = res.get("config", {}).get("k", 10)
        cells = _cells(res)
        seeds = sorted({c["seed"] for c in cells})
        lines += [
            f"## {exp.name}: {exp.data}, {exp.task}, {exp.model}",
            "",
            f"{len(cells)} cells done, seeds {seeds}; "
            f"{sum('skipped' in c for c in res['cells'].values())} skipped.",
            "",
            metric_table(res, exp.task, k, exp.methods or preset.methods),
        ]
        png = fig_dir / f"{exp.name}.png"
        fig_dir.mkdir(parents=True, exist_ok=True)
        if cells and plot_results(res, exp.task, k, png):
            lines += [f"![{exp.name}](results/{png.name})", ""]
        else:
            lines += ["(plot skipped: matplotlib is not installed or no cells yet)", ""]
        lines += [
            "DNIS: mean kept dimension per frequency block (b0 = most frequent; K = "
            f"{res.get('config', {}).get('dim', '?')}), and α's mean per block:",
            "",
            dnis_dims_table(res),
            "Search time vs training the candidates:",
            "",
            timing_table(res),
        ]
        matched = time_matched_table(res)
        if matched:
            lines += [
                "Random search at DNIS's wall time (means over seeds; a trial starts only "
                "while the time used plus the mean trial so far fits; the first always runs; "
                "the seconds used include the final evaluation):",
                "",
                matched,
            ]
    doc.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text("\n".join(lines), doc)
    return doc


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mixemb.results", description=__doc__)
    p.add_argument(
        "--preset",
        default=os.environ.get("RESULTS_PRESET", "quick"),
        choices=sorted(PRESETS),
        help="default: $RESULTS_PRESET or quick",
    )
    p.add_argument(
        "--out",
        default=os.environ.get("RESULTS_OUT", "docs/results/cells"),
        help="where the cells are (default: $RESULTS_OUT or docs/results/cells, committed)",
    )
    p.add_argument("--doc", default="docs/results.md")
    p.add_argument("--only", default="", help="comma-separated experiment names")
    p.add_argument("--seeds", help="override the preset's seeds, e.g. 0,1")
    p.add_argument(
        "--methods", help="override every experiment's methods (finished cells are kept)"
    )
    p.add_argument(
        "--report-only", action="store_true", help="rewrite the report from results.json"
    )
    p.add_argument("--note", default="", help="a paragraph for the report (how it was run)")
    p.add_argument("--note-file", help="read the --note paragraph from this file")
    args = p.parse_args(argv)
    if args.note_file:
        if args.note:
            p.error("give --note or --note-file, not both")
        try:
            args.note = Path(args.note_file).read_text().strip()
        except OSError as exc:
            p.error(f"--note-file {args.note_file}: {exc.strerror}")
    preset = PRESETS[args.preset]
    if args.seeds:
        preset = Preset(
            preset.experiments,
            [int(s) for s in args.seeds.split(",")],
            preset.budgets,
            preset.methods,
            preset.config,
        )
    if args.methods:
        methods = [m for m in args.methods.split(",") if m]
        preset = Preset(
            [replace(e, methods=methods) for e in preset.experiments],
            preset.seeds,
            preset.budgets,
            methods,
            preset.config,
        )
    out, only = Path(args.out), [n for n in args.only.split(",") if n]
    shown = list(argv or sys.argv[1:])
    for i, arg in enumerate(shown):  # the note is printed once, as the report's paragraph
        if arg == "--note" and i + 1 < len(shown):
            shown[i + 1] = "<the paragraph under the methods>"
        elif arg.startswith("--note="):
            shown[i] = "--note=<the paragraph under the methods>"
    command = shlex.join(["python", "-m", "mixemb.results", *shown])
    if not any(a.startswith("--preset") for a in (argv or sys.argv[1:])):
        command = f"RESULTS_PRESET={args.preset} " + command
    t0 = time.perf_counter()
    if args.report_only:
        import json

        results = {
            e.name: json.loads((out / e.name / "results.json").read_text())
            for e in preset.experiments
            if (out / e.name / "results.json").exists() and (not only or e.name in only)
        }
        wall = None
    else:
        results = run_preset(preset, out, only=only)
        wall = time.perf_counter() - t0
    doc = write_report(
        results, preset, args.preset, out, Path(args.doc), command=command, wall_seconds=wall,
        note=args.note,
    )  # fmt: skip
    print(f"wrote {doc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
