"""experiments/: presets as data, the shared-output runner and the results-page writer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from experiments.presets import load_presets, parse_presets
from experiments.report import render, write_report
from experiments.runner import header, run_preset
from experiments.shared_out import ConfigMismatch, SharedResults
from experiments.tables import dnis_dims_table, search_seconds, summary_table, time_matched_table
from experiments.verdict import verdict_row, verdict_rows

ROOT = Path(__file__).resolve().parents[1]
SMOKE = load_presets()["smoke"]
# uniform-K per seed, then per seed: dnis_ft and mde@0.3 at 1, all three at 0.5
SMOKE_CELLS = 2 + 2 * 5


# ---- presets ------------------------------------------------------------------------------


def test_presets_resolve_methods_and_config_from_defaults_preset_and_experiment():
    presets = load_presets()
    assert {"quick", "full", "smoke"} <= set(presets)
    quick = {e.name: e for e in presets["quick"].experiments}
    assert len(quick) == 7 and presets["quick"].seeds == [0, 1, 2]
    assert presets["quick"].budgets == [1.0, 0.5, 0.2, 0.1, 0.05]
    assert presets["quick"].verdict_budgets == [0.1, 0.05]
    mf, topk = quick["ml1m-rating-mf"], quick["ml1m-topk-neumf"]
    assert mf.methods[:3] == ["uniform", "dnis", "dnis_ft"] and len(mf.methods) == 29
    assert "dnis_blockmask_rot_ft:int8" in mf.methods and "svd_ft:fp16" in mf.methods
    assert mf.config == {"budget_unit": "bytes", "random_trials": 3, "model_kwargs": {}}
    assert topk.config["batch_size"] == 4096 and topk.config["random_trials"] == 3
    assert quick["ml1m-rating-fm-side"].dataset_spec == {
        "name": "movielens-1m",
        "task": "rating",
        "seed": 0,
        "min_count": 1,
        "side_fields": True,
    }
    assert not quick["ml1m-rating-fm"].verdict and quick["ml1m-rating-fm"].note
    assert "random_trials" not in presets["full"].experiments[0].config


def test_presets_reject_unknown_keys_and_experiments():
    with pytest.raises(ValueError, match=r"unknown keys \['dims'\]"):
        parse_presets('[presets.p]\nseeds = [0]\n[[presets.p.experiments]]\nname = "a"\ndims = 3\n')
    with pytest.raises(ValueError, match="no seeds"):
        parse_presets("[presets.p]\nseeds = []\n")
    with pytest.raises(ValueError, match="has no experiment"):
        SMOKE.only(["nope"])


# ---- the runner -----------------------------------------------------------------------------


def _run(out: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "experiments", "run", "--preset", "smoke", "--out", str(out)]
    return subprocess.Popen(
        [*cmd, "--no-report", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_run_budgets_override_runs_only_those_budgets_and_rejects_bad_ones(tmp_path):
    out = tmp_path / "cells"
    bad = _run(out, "--budgets", "0.5,2")
    _, err = bad.communicate(timeout=120)
    assert bad.returncode == 2 and "--budgets: '2' is not a fraction in (0, 1]" in err
    assert not out.exists()
    run = _run(out, "--budgets", "0.5", "--seeds", "0", "--methods", "uniform")
    _, err = run.communicate(timeout=600)
    assert run.returncode == 0, err
    cells = json.loads((out / "synthetic-rating-mf" / "results.json").read_text())["cells"]
    assert sorted(cells) == ["uniform|0.5|0", "uniform|1|0"]


@pytest.mark.slow
def test_two_processes_share_an_out_and_each_cell_runs_once(tmp_path):
    out = tmp_path / "cells"
    procs = [_run(out), _run(out)]
    logs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in logs]
    results = json.loads((out / "synthetic-rating-mf" / "results.json").read_text())
    assert len(results["cells"]) == SMOKE_CELLS
    ran = sum(line.count(" test mse ") for stdout, _ in logs for line in stdout.splitlines())
    assert ran == SMOKE_CELLS  # the other process left it alone or took it as done
    claims = out / "synthetic-rating-mf" / "results.json.claims"
    assert not claims.exists() or json.loads(claims.read_text()) == {}
    assert (out / "synthetic-rating-mf" / "results.md").exists()

    again = _run(out)
    stdout, _ = again.communicate(timeout=600)
    assert again.returncode == 0 and f"{SMOKE_CELLS} already done" in stdout
    assert json.loads((out / "synthetic-rating-mf" / "results.json").read_text()) == results


def test_a_process_with_another_config_is_rejected_before_any_work(tmp_path):
    exp = SMOKE.experiments[0]
    path = tmp_path / exp.name / "results.json"
    SharedResults(path, header(exp)).reserve()  # the first process's config, no cells yet
    other = replace(SMOKE, experiments=[replace(exp, config={**exp.config, "dim": 16})])

    def load(spec):
        raise AssertionError("loaded data before checking the config")

    with pytest.raises(ConfigMismatch, match=r"config\.dim: 8 in the file, 16 here"):
        run_preset(other, tmp_path, load=load, log=lambda _: None)
    # from the command line: a clean one-line error, exit 2, nothing written
    before = path.read_text()
    path.write_text(before.replace('"dim": 8', '"dim": 16'))
    proc = _run(tmp_path)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 2 and stdout == ""
    assert stderr.count("\n") == 1 and "config.dim: 16 in the file, 8 here" in stderr
    assert json.loads(path.read_text())["cells"] == {}


def test_claims_are_keyed_by_config_and_dropped_when_their_process_is_gone(tmp_path):
    exp = SMOKE.experiments[0]
    store = SharedResults(tmp_path / "results.json", header(exp))
    store.reserve()
    assert store.take("uniform|1|0") == (None, None)
    claims = json.loads(store.claims_path.read_text())
    assert list(claims) == [f"{store.id}|uniform|1|0"]
    # another live process (the test runner's parent) holds a cell: left to it
    alive = {**claims[f"{store.id}|uniform|1|0"], "pid": os.getppid()}
    gone = {**alive, "pid": 2**22 + 12345}  # above Linux's pid_max: no such process
    claims = {f"{store.id}|uniform|1|1": alive, f"{store.id}|uniform|0.5|0": gone}
    store.claims_path.write_text(json.dumps(claims))
    assert store.take("uniform|1|1") == (
        None,
        f"running in process {os.getppid()} on {alive['host']}",
    )
    assert store.take("uniform|0.5|0") == (None, None)  # its process exited
    # a claim under another config's key does not hold this config's cell
    store.claims_path.write_text(json.dumps({"0123456789abcdef|uniform|1|1": alive}))
    assert store.take("uniform|1|1") == (None, None)
    cell = {"method": "uniform", "budget": 1.0, "seed": 1, "skipped": "test"}
    assert store.record({"cells": {"uniform|1|1": cell}})["cells"] == {"uniform|1|1": cell}
    store.release("uniform|1|1")
    assert f"{store.id}|uniform|1|1" not in json.loads(store.claims_path.read_text())
    assert store.take("uniform|1|1") == (cell, None)
    assert store.lookup({"cells": {}}, "uniform|1|1") == cell  # another process's cell


# ---- the report -----------------------------------------------------------------------------


def _cell(method, budget, seed, test, valid=None, seconds=10.0, **extra):
    return {
        "method": method,
        "budget": budget,
        "seed": seed,
        "test": {"mse": test},
        "valid": {"mse": test if valid is None else valid},
        "kept_params": 1,
        "stored_bytes": 1,
        "seconds": seconds,
        **({"block_mean_dims": [4.0, 2.0]} if method.startswith("dnis") else {}),
        **extra,
    }


def _results(cells: list[dict], unit: str = "bytes") -> dict:
    return {
        "cells": {str(i): c for i, c in enumerate(cells)},
        "config": {"k": 10, "dim": 8, "budget_unit": unit},
    }


def _pair(dnis: tuple[float, ...], other: tuple[float, ...], budget=0.1, **names) -> list[dict]:
    d, o = names.get("d", "dnis_ft"), names.get("o", "uniform")
    return [_cell(d, budget, s, v) for s, v in enumerate(dnis)] + [
        _cell(o, budget, s, v) for s, v in enumerate(other)
    ]


def test_verdict_is_a_win_a_tie_or_a_loss_beyond_two_standard_errors():
    # MSE: lower is better. Means 0.70 vs 0.80, each with std 0.01 over 3 seeds:
    # 2 SE = 2 * sqrt(2 * 1e-4 / 3) = 0.0163
    win = verdict_row(_results(_pair((0.69, 0.70, 0.71), (0.79, 0.80, 0.81))), "x", "rating", 0.1)
    assert win.result == "win" and win.winner == "dnis_ft"
    assert win.gap == pytest.approx(0.10) and win.two_se == pytest.approx(0.016330, abs=1e-6)
    tie = verdict_row(
        _results(_pair((0.79, 0.80, 0.81), (0.785, 0.795, 0.805))), "x", "rating", 0.1
    )
    assert tie.result == "tie" and tie.winner == "uniform" and tie.gap == pytest.approx(-0.005)
    loss = verdict_row(_results(_pair((0.79, 0.80, 0.81), (0.69, 0.70, 0.71))), "x", "rating", 0.1)
    assert loss.result == "loss" and loss.gap == pytest.approx(-0.10)


def test_verdict_selects_on_validation_and_needs_two_seeds():
    cells = _pair((0.80, 0.81), (0.70, 0.71))
    # dnis_rot_ft has the best test metric but a worse validation metric than dnis_ft
    cells += [_cell("dnis_rot_ft", 0.1, s, 0.5, valid=0.9) for s in (0, 1)]
    cells += [_cell("mde@0", 0.1, 0, 0.1)]  # one seed: not a candidate
    row = verdict_row(_results(cells), "x", "rating", 0.1)
    assert (row.dnis, row.other, row.winner) == ("dnis_ft", "uniform", "uniform")
    assert verdict_row(_results(cells), "x", "rating", 0.05) is None  # no cells there


def test_verdict_tables_by_bytes_and_by_parameters():
    preset = replace(SMOKE, verdict_budgets=[0.1])
    name = preset.experiments[0].name
    by_bytes = {name: _results(_pair((0.69, 0.70, 0.71), (0.79, 0.80, 0.81)))}
    assert [r.result for r in verdict_rows(by_bytes, preset, "bytes")] == ["win"]
    # fp32 cells of a byte budget keep at most that fraction of N·K: the params table counts them
    by_params_rows = verdict_rows(by_bytes, preset, "params")
    assert [r.result for r in by_params_rows] == ["win"]
    assert by_params_rows[0].dnis_kept is not None
    text = render(by_bytes, preset, Path("cells"), Path("/nonexistent"), plot=False)
    lines = text.splitlines()
    assert lines[0] == "# Results" and "## Verdict" in lines[:10]
    assert (
        f"| {name} | 10 % | mse ↓ | `dnis_ft` |" in text
        and "| +0.1000 ± 0.0163 | **win** |" in text
    )
    assert "in 1 of 1 (experiment, budget) pairs" in text
    assert "python -m experiments report --preset smoke --out cells" in text
    assert "By parameters (the paper's unit: budgets as fractions of uniform-K's N·K" in text
    by_params = {name: _results(_pair((0.79, 0.80, 0.81), (0.69, 0.70, 0.71)), unit="params")}
    text = render(by_params, preset, Path("cells"), Path("/nonexistent"), plot=False)
    assert "By parameters (the paper's unit: budgets as fractions of uniform-K's N·K" in text
    assert "| -0.1000 ± 0.0163 | loss |" in text
    assert "UTC" not in text and "cpu count" not in text


def test_report_writes_the_page_and_its_plot(tmp_path):
    name = SMOKE.experiments[0].name
    cells = _pair((0.69, 0.70), (0.79, 0.80), budget=0.5) + _pair((0.6, 0.6), (0.6, 0.6), 1.0)
    doc = write_report({name: _results(cells)}, SMOKE, tmp_path / "cells", tmp_path / "r.md")
    text = doc.read_text()
    assert f"## {name}: synthetic, rating, mf" in text and "| method | 1 | 0.5 |" in text
    assert "**0.6950 ± 0.0071 (2)**" in text  # the best mean of a column in bold
    png = tmp_path / "results" / f"{name}.png"
    assert png.exists() == (f"![{name}](results/{name}.png)" in text)


def test_dnis_dims_come_from_dnis_ft_and_plain_dnis_only_without_it():
    def cell(method, dims, seed=0):
        return {"method": method, "budget": 0.2, "seed": seed, "block_mean_dims": dims}

    only_ft = {"cells": {"a": cell("dnis_ft", [8.0, 2.0]), "b": cell("uniform", [12.0, 12.0])}}
    assert "| 0.2 | 8.0 | 2.0 |" in dnis_dims_table(only_ft)
    both = {"cells": {"c": cell("dnis", [6.0, 4.0]), "a": cell("dnis_ft", [8.0, 2.0])}}
    assert "| 0.2 | 8.0 | 2.0 |" in dnis_dims_table(both)
    mixed = {**both["cells"], "d": cell("dnis", [4.0, 6.0], seed=1)}
    assert "| 0.2 | 6.0 | 4.0 |" in dnis_dims_table({"cells": mixed})
    assert dnis_dims_table({"cells": {"b": cell("uniform", [12.0, 12.0])}}).startswith("no DNIS")


def test_summary_names_the_smallest_budget_that_stays_within_half_a_percent():
    cells = [
        _cell("uniform", 1.0, 0, 0.79),
        _cell("uniform", 1.0, 1, 0.81),
        _cell("uniform", 0.5, 0, 0.803),
        _cell("uniform", 0.5, 1, 0.803),
        _cell("uniform", 0.2, 0, 0.82),
        _cell("uniform", 0.2, 1, 0.82),
        # within at 0.5 and at 0.1 but not at 0.2: it does not *stay* within below 0.5
        _cell("dnis_ft", 1.0, 0, 0.79, search_seconds=5.0),
        _cell("dnis_ft", 0.5, 0, 0.80),
        _cell("dnis_ft", 0.2, 0, 0.85),
        _cell("dnis_ft", 0.1, 0, 0.80),
        _cell("dnis_rot_ft", 1.0, 0, 0.79, search_seconds=15.0),  # searched again elsewhere
        _cell("dnis_rot_ft", 0.5, 0, 0.79),
        _cell("dnis_rot_ft", 0.2, 0, 0.804),
        _cell("mde@0.3", 1.0, 0, 0.81),  # never: worse than 0.804 already at 1
        _cell("uniform", 1.0, 2, 0.80),  # an unfinished grid seed: not in the timing
    ]
    results = _results(cells)
    preset = replace(SMOKE, experiments=[replace(SMOKE.experiments[0], name="x")])
    row = summary_table({"x": results}, preset).splitlines()[2]
    assert "| 0.8000 (n=3) |" in row and "| 50% (0.8000, n=1) |" in row
    assert "20% (0.8040, n=1): `dnis_rot_ft`" in row and "50% (0.8030, n=2): `uniform`" in row
    assert "| never |" not in row and "5 s vs 30 s (6.0× less)" in row
    # a seed with no dnis_ft cell: the mean of its other DNIS cells' searches
    more = cells + [
        _cell("dnis_rot_ft", 1.0, 1, 0.79, search_seconds=8.0),
        _cell("dnis", 1.0, 1, 0.79, search_seconds=12.0),
    ]
    assert search_seconds(_results(more)) == {0: 5.0, 1: 10.0}


def test_time_matched_table_lists_given_and_used_seconds_and_trials():
    m = "random_blocks@dnis_ft"
    cells = {
        "a": _cell(m, 0.5, 1, 0.8, seconds=50.0, time_budget_seconds=40.0, trials=2),
        "b": _cell(m, 0.5, 0, 0.8, seconds=30.0, time_budget_seconds=20.0, trials=1),
        "c": _cell("random", 0.5, 0, 0.8, seconds=99.0, trials=3),
    }
    table = time_matched_table({"cells": cells})
    assert f"| `{m}` | 0.5 | 30 | 40 | 1, 2 |" in table  # trials in seed order
    assert "| `random`" not in table
    assert time_matched_table({"cells": {"c": cells["c"]}}) == ""
