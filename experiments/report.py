"""docs/results.md from the result cells alone: the verdict first, then the tables.

Deterministic: the same cells give the same page (no dates, machines or timings of the
run that wrote it; those stay in the cells' JSON and in git history). Plots go to
``<doc folder>/results/<experiment>.png`` when matplotlib is installed.
"""

from __future__ import annotations

import json
from pathlib import Path

from experiments.by_params import params_results
from experiments.presets import Experiment, Preset
from experiments.tables import (
    WITHIN,
    dnis_dims_table,
    done_cells,
    metric_table,
    summary_table,
    time_matched_table,
    timing_table,
)
from experiments.verdict import verdict_rows, verdict_summary, verdict_table
from mixemb.methods import plot_results

DEFAULT_PRESET = "quick"
DEFAULT_OUT = Path("docs/results/cells")
DEFAULT_DOC = Path("docs/results.md")
PLOT_SKIPPED = "(plot skipped: matplotlib is not installed)"

METHODS = (
    "`uniform` = the grid over one dimension d = ⌊budget·K⌋ (dense table); "
    "`dnis` / `dnis_ft` = DNIS (element-wise magnitude pruning of E ⊙ α, then fine-tuning "
    "with the mask fixed); `dnis_rot*` = DNIS with Ê rotated onto its singular vectors before "
    "pruning (MF/FM only); `dnis_aligned*` = DNIS's per-feature dimensions kept at one column "
    "order shared by every feature (so two features' kept dims overlap); `dnis_floor*` = "
    "DNIS's element-wise pruning in which every feature first keeps its largest entry; "
    "`dnis_warm*` = DNIS whose warm start is the plain trainer's whole schedule "
    "(early-stopped), not `warmup_epochs`; `dnis_blocks` = DNIS's mean kept dimension per "
    "block, scaled to the budget, trained and stored like `mde_blocks`; `magnitude*` = "
    "pruning a trained uniform-K model; `mde@a` = MDE with exponent a; `random` = random "
    "search over block dims (a fixed number of trials); `mde_blocks@a` / `random_blocks` = "
    "the same stored as one dense table per block; `random_blocks@dnis_ft` = "
    "`random_blocks` given the wall time `dnis_ft` took at the same budget and seed (its "
    "search plus that budget's prune and fine-tune) instead of a fixed number of trials (a "
    "trial starts while the time used plus the mean trial so far fits; the first always "
    "runs); `dnis_blockmask_rot_ft` = DNIS's searched table Ê rotated onto its singular "
    "vectors (the model absorbs the rotation) and kept on one set of dimensions per "
    "frequency block, chosen by the energy of Ê's columns per stored byte, then fine-tuned "
    "with that mask fixed and stored as one dense table per block; "
    "`dnis_warm_blockmask_rot_ft` = the same on the search with the full warm start "
    "(`dnis_warm*`); `dnis_warm_sqrtlookupmask_rot_ft` / `magnitude_sqrtlookupmask_rot_ft` "
    "= the warm and trained-table variants with each row's energy weighted by the square "
    "root of its training lookups when the columns are allocated; "
    "`magnitude_blockmask_rot_ft` = the same on the trained uniform-K table (no search); "
    "`svd_ft` = the trained uniform-K table rotated and truncated to its leading d columns, "
    "fine-tuned, stored dense (docs/accuracy_per_byte.md). A suffix `:fp16`, `:bf16` or "
    "`:int8` stores the values at that dtype (int8 row-wise, with an fp16 scale and bias a "
    "row), so the same bytes hold more values; no suffix is fp32. Selection on validation "
    "only; the test split is only reported.\n\n"
    "Storage: a budget is a fraction of the uniform-K table's dense fp32 bytes, and ragged "
    "tables (`dnis*`, `magnitude*`, `mde@a`, `random`) pay their metadata out of it: 8.5 B "
    "of masks and offsets per row at K = 64 against 256 B for a dense uniform-64 row, so at "
    "5 % a ragged table holds about one value per row. Block tables (`uniform`, "
    "`mde_blocks`, `random_blocks`, `dnis_blocks`, `*_blockmask*`, `svd_ft`) have no "
    "per-row metadata.\n"
)


def load_cells(preset: Preset, out: Path) -> dict[str, dict]:
    """name → results.json dict for every experiment of ``preset`` with cells under ``out``."""
    results = {}
    for exp in preset.experiments:
        path = Path(out) / exp.name / "results.json"
        if path.exists():
            res = json.loads(path.read_text())
            if done_cells(res):
                results[exp.name] = res
    return results


def report_command(preset: Preset, out: Path) -> str:
    """The one command that rewrites the page from the cells under ``out``."""
    cmd = "python -m experiments report"
    if preset.name != DEFAULT_PRESET:
        cmd += f" --preset {preset.name}"
    if Path(out) != DEFAULT_OUT:
        cmd += f" --out {out}"
    return cmd


def verdict_section(results: dict[str, dict], preset: Preset) -> list[str]:
    left_out = [e.name for e in preset.experiments if not e.verdict and e.name in results]
    lines = ["## Verdict", ""]
    by_bytes = verdict_rows(results, preset, "bytes")
    lines += [verdict_summary(by_bytes, "uniform-K's stored bytes"), verdict_table(by_bytes)]
    lines.append(
        "Winner: the method with the best mean validation metric over seeds at that budget "
        "(every method stores the same bytes). DNIS's gap: mean test metric of the DNIS "
        "variant best on validation minus that of the best other method on validation, "
        "signed so that positive favours DNIS, ± 2 combined standard errors over seeds; a "
        "win or loss when the gap is beyond that, a tie within it. Methods with fewer than 2 "
        "seeds at a budget are left out."
        + (f" Not counted: {', '.join(left_out)} (see its section)." if left_out else "")
        + " Where mixed dimensions should matter most (synthetic Criteo-like fields whose "
        "signal dimensions are known): [planted.md](planted.md)."
    )
    lines.append("")
    by_params = verdict_rows(results, preset, "params")
    lines += [
        "By parameters (the paper's unit: budgets as fractions of uniform-K's N·K parameters):",
        "",
        verdict_summary(by_params, "uniform-K's parameters"),
    ]
    if by_params:
        lines.append(verdict_table(by_params))
    lines += [params_note(results, preset), ""]
    return lines


def params_note(results: dict[str, dict], preset: Preset) -> str:
    """Which cells the verdict by parameters counts, and why."""
    over, unsized = 0, []
    for exp in preset.experiments:
        if exp.verdict and exp.name in results:
            _, size, n = params_results(results[exp.name])
            over += n
            if size is None:
                unsized.append(exp.name)
    checked = (
        f"{over} keep more and are left out" if over else "every one keeps at most that"
    ) + "; N·K from the experiment's fp32 `uniform` cells"
    if unsized:
        checked += (
            f", which {', '.join(unsized)} {'has' if len(unsized) == 1 else 'have'} none, "
            "so there only the cells run at a parameter budget count"
        )
    return (
        "Cells counted: those run at a parameter budget, and those with fp32 values run at "
        "byte budget b, which store at most b·4·N·K bytes and so keep at most b·N·K "
        f"parameters, as a cell of parameter budget b does (checked against the parameters "
        f"each cell keeps: {checked}). Ragged tables (`dnis*`, `magnitude*`, `mde@a`, "
        "`random`; see Storage under Methods) pay their metadata out of those bytes and "
        "keep fewer parameters than b·N·K (last column: the mean over seeds of the two "
        "compared methods), so this table handicaps them. Cells with fp16, bf16 or int8 "
        "values are not counted: at byte budget b they hold more than b·N·K parameters, and "
        "a parameter budget does not price precision. Winner, gap and seeds as in the table "
        "by bytes."
    )


def experiment_section(res: dict, exp: Experiment, fig_dir: Path, plot: bool) -> list[str]:
    k = res.get("config", {}).get("k", 10)
    cells = done_cells(res)
    seeds = sorted({c["seed"] for c in cells})
    skipped = sum("skipped" in c for c in res["cells"].values())
    lines = [f"## {exp.name}: {exp.data}, {exp.task}, {exp.model}", ""]
    if exp.note:
        lines += [exp.note, ""]
    lines += [
        f"{len(cells)} cells done, seeds {seeds}; {skipped} skipped.",
        "",
        metric_table(res, exp.task, k, exp.methods),
    ]
    png = fig_dir / f"{exp.name}.png"
    if plot:
        fig_dir.mkdir(parents=True, exist_ok=True)
    if plot and plot_results(res, exp.task, k, png):
        lines += [f"![{exp.name}]({fig_dir.name}/{png.name})", ""]
    else:
        lines += [PLOT_SKIPPED, ""]
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
            "Random search at DNIS's wall time (means over seeds; the seconds used include "
            "the final evaluation):",
            "",
            matched,
        ]
    return lines


def render(
    results: dict[str, dict], preset: Preset, out: Path, fig_dir: Path, *, plot: bool = True
) -> str:
    """The page's Markdown; with ``plot``, the plots are written into ``fig_dir``."""
    seeds = sorted({c["seed"] for r in results.values() for c in done_cells(r)})
    lines = [
        "# Results",
        "",
        f"DNIS against its baselines at equal stored bytes: {len(results)} experiments of "
        f"the `{preset.name}` preset (experiments/presets.toml), seeds {seeds}. Every number "
        f"comes from the cells in `{out}/<experiment>/results.json`, which also keep each "
        f"cell's provenance. `{report_command(preset, out)}` rewrites this page from them; "
        "`make results` first runs the cells that are missing.",
        "",
        *verdict_section(results, preset),
        "## Methods",
        "",
        METHODS,
        "## Smallest budget within 0.5 % of uniform-K",
        "",
        f"Smallest budget (fraction of uniform-K's bytes) at which a method stays within "
        f"{WITHIN:.1%} (relative) of uniform-K's test metric — at that budget and every larger "
        "one it ran; means over seeds, n = seeds of that cell. `uniform` at budget 1 is "
        "uniform-K itself, so the uniform grid's own entry is the smallest smaller "
        "dimension that holds up. Why DNIS falls behind at small budgets (validation "
        "ablations): docs/ablation.md.",
        "",
        summary_table(results, preset),
    ]
    for exp in preset.experiments:
        if exp.name in results:
            lines += experiment_section(results[exp.name], exp, fig_dir, plot)
    return "\n".join(lines)


def write_report(results: dict[str, dict], preset: Preset, out: Path, doc: Path) -> Path:
    """Write ``doc`` and its plots (in ``doc.parent / 'results'``) from ``results``."""
    doc = Path(doc)
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(render(results, preset, out, doc.parent / "results"), encoding="utf-8")
    return doc
