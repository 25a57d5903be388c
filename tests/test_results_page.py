"""docs/results.md is what the committed cells render to.

The page is rendered again from docs/results/cells with experiments/presets.toml's
``quick`` preset and must equal the committed page, less the plot lines (matplotlib is
optional): a cell changed or added without rewriting the page, or a page edited by hand,
fails here. ``python -m experiments report`` rewrites it. The verdict by parameters is
checked on fixture cells: which cells count as cells of a parameter budget.
"""

from __future__ import annotations

import re
from pathlib import Path

from experiments.by_params import params_results
from experiments.presets import Experiment, Preset, load_presets
from experiments.report import DEFAULT_OUT, load_cells, params_note, render
from experiments.verdict import verdict_rows

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "results.md"


def _without_plots(text: str) -> list[str]:
    return [x for x in text.splitlines() if not x.startswith(("![", "(plot skipped"))]


def test_page_is_what_the_committed_cells_render_to():
    preset = load_presets()["quick"]
    results = load_cells(preset, ROOT / DEFAULT_OUT)
    assert results, "no committed cells"
    again = render(results, preset, DEFAULT_OUT, ROOT / "docs" / "results", plot=False)
    page = PAGE.read_text()
    assert _without_plots(again) == _without_plots(page), (
        "docs/results.md is not what docs/results/cells render to: run `python -m experiments "
        "report`"
    )


def test_page_opens_with_the_verdict_and_keeps_no_run_diary():
    head = PAGE.read_text().splitlines()[:40]
    assert head[0] == "# Results" and "## Verdict" in head
    assert not any(re.search(r"\d\d:\d\d\s*UTC|20\d\d-\d\d-\d\d", line) for line in head)


# Fixture cells: a rating experiment with K = 4 and N = 100 rows (N·K = 400), budgets as
# fractions of the dense fp32 bytes, two seeds a method.
K, NK = 4, 400


def _cell(method, budget, mse, kept, *, seed=0, value_dtype=None, unit=None) -> dict:
    cell = {
        "method": method,
        "budget": budget,
        "seed": seed,
        "kept_params": kept,
        "stored_bytes": 4 * kept,
        "seconds": 1.0,
        "valid": {"mse": mse},
        "test": {"mse": mse + 0.01},
        "config": {"dim": K, **({"budget_unit": unit} if unit else {})},
    }
    if value_dtype:
        cell["value_dtype"] = value_dtype
    if method.startswith("dnis"):
        cell["block_mean_dims"] = [2.0, 1.0]
    return cell


def _results(*cells: dict, unit: str = "bytes") -> dict:
    """Each cell at seeds 0 and 1, its metric 0.01 apart."""
    both = [
        _cell(
            c["method"],
            c["budget"],
            c["valid"]["mse"] + s / 100,
            c["kept_params"],
            seed=s,
            value_dtype=c.get("value_dtype"),
            unit=c["config"].get("budget_unit"),
        )
        for c in cells
        for s in (0, 1)
    ]
    return {
        "config": {"dim": K, "budget_unit": unit},
        "cells": {f"{c['method']}|{c['budget']:g}|{c['seed']}": c for c in both},
    }


# The best cell by bytes stores fp16 values; magnitude_ft keeps more than 0.5·N·K.
MIXED = _results(
    _cell("uniform", 1.0, 0.60, NK),
    _cell("uniform", 0.5, 0.80, NK // 2),
    _cell("dnis_ft", 0.5, 0.70, 150),
    _cell("dnis_blockmask_rot_ft:fp16", 0.5, 0.50, 390, value_dtype="fp16"),
    _cell("magnitude_ft", 0.5, 0.40, 250),
)
# Its only DNIS cell stores int8 values: no row by parameters.
NO_DNIS = _results(
    _cell("uniform", 1.0, 0.60, NK),
    _cell("uniform", 0.5, 0.80, NK // 2),
    _cell("dnis_ft:int8", 0.5, 0.70, 700, value_dtype="int8"),
)


def _preset(*names: str) -> Preset:
    exps = [Experiment(n, "movielens-1m", "rating", "mf", [], {}) for n in names]
    return Preset("fixture", exps, [0, 1], [1.0, 0.5], [0.5])


def _section(text: str, start: str, end: str) -> str:
    return text[text.index(start) : text.index(end, text.index(start))]


def test_page_renders_the_verdict_by_parameters_from_fp32_cells(tmp_path):
    preset = _preset("mixed", "no-dnis")
    page = render({"mixed": MIXED, "no-dnis": NO_DNIS}, preset, tmp_path, tmp_path, plot=False)
    by_bytes = _section(page, "## Verdict", "By parameters")
    by_params = _section(page, "By parameters", "## Methods")
    assert "| mixed | 50 % | mse ↓ | `magnitude_ft` |" in by_bytes
    assert "`dnis_blockmask_rot_ft:fp16`" in by_bytes and "kept params" not in by_bytes
    rows = [x for x in by_params.splitlines() if x.startswith("| mixed")]
    assert rows == [
        "| mixed | 50 % | mse ↓ | `dnis_ft` | `dnis_ft` 0.7150 | `uniform` 0.8150 "
        "| +0.1000 ± 0.0141 | **win** | 37.5 % / 50.0 % |"
    ]
    assert "no-dnis" not in by_params.split("Cells counted")[0]
    assert ":fp16" not in by_params and ":int8" not in by_params
    assert "in 1 of 1 (experiment, budget) pairs" in by_params
    assert "2 keep more and are left out" in by_params  # magnitude_ft, both seeds


def test_params_results_keep_fp32_cells_within_the_budget():
    kept, size, over = params_results(MIXED)
    assert size == NK and over == 2
    assert sorted({c["method"] for c in kept["cells"].values()}) == ["dnis_ft", "uniform"]
    assert params_results(NO_DNIS)[0]["cells"].keys() == {
        k for k in NO_DNIS["cells"] if k.startswith("uniform")
    }


def test_params_results_without_uniform_keep_only_parameter_budget_cells():
    res = _results(
        _cell("dnis_ft", 0.5, 0.70, 150),
        _cell("mde_blocks@0.3", 0.5, 0.75, 190, unit="params"),
    )
    kept, size, over = params_results(res)
    assert size is None and over == 0
    assert {c["method"] for c in kept["cells"].values()} == {"mde_blocks@0.3"}
    note = params_note({"x": res}, _preset("x"))
    assert "x has none, so there only the cells run at a parameter budget count" in note


def test_cells_run_at_a_parameter_budget_count_and_take_precedence():
    # An experiment run in parameters counts whatever its values' dtype; in a byte
    # experiment, a cell run in parameters replaces the byte cell of its method, budget
    # and seed.
    in_params = _results(
        _cell("uniform", 1.0, 0.60, NK),
        _cell("dnis_ft:fp16", 0.5, 0.70, 200, value_dtype="fp16"),
        _cell("uniform", 0.5, 0.80, NK // 2),
        unit="params",
    )
    mixed = dict(MIXED, cells=dict(MIXED["cells"]))
    for seed in (0, 1):
        cell = _cell("dnis_ft", 0.5, 0.90 + seed / 100, 200, seed=seed, unit="params")
        mixed["cells"][f"dnis_ft|0.5|{seed}|params"] = cell
    rows = verdict_rows({"p": in_params, "m": mixed}, _preset("p", "m"), "params")
    assert [(r.experiment, r.dnis, r.other, r.result) for r in rows] == [
        ("p", "dnis_ft:fp16", "uniform", "win"),
        ("m", "dnis_ft", "uniform", "loss"),
    ]
    assert rows[1].dnis_kept == 0.5
    assert [r.experiment for r in verdict_rows({"p": in_params}, _preset("p"), "bytes")] == []
