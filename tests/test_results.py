"""The results pipeline: a tiny synthetic run, resumed, and the markdown report it writes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from mixemb.data.schema import Dataset, FieldSpec, Split
from mixemb.results import CARRIED, Experiment, Preset, main, run_preset, write_report


def _dataset(n=800, users=40, items=24):
    g = torch.Generator().manual_seed(3)
    u = (torch.rand(n, generator=g) ** 2 * users).long()
    i = (torch.rand(n, generator=g) ** 2 * items).long()
    pu, qi = torch.randn(users, 2, generator=g), torch.randn(items, 2, generator=g)
    y = 3 + (pu[u] * qi[i]).sum(1) + 0.2 * torch.randn(n, generator=g)
    ids = torch.stack([u, users + i], 1).int()
    freq = torch.bincount(ids[: int(0.7 * n)].reshape(-1).long(), minlength=users + items)
    enc = SimpleNamespace(
        num_features=users + items,
        fields=[FieldSpec("u"), FieldSpec("i")],
        frequencies=freq.numpy(),
    )
    a, b = int(0.7 * n), int(0.9 * n)
    splits = [Split(ids[s], y[s]) for s in (slice(0, a), slice(a, b), slice(b, n))]
    return Dataset("t", "rating", enc, *splits)


PRESET = Preset(
    experiments=[Experiment("tiny-rating-mf", "t", "rating", "mf")],
    seeds=[0, 1],
    budgets=[1.0, 0.5],
    methods=["uniform", "dnis", "dnis_rot_ft", "mde@0", "mde@0.5", "random"],
    config=dict(
        dim=8,
        num_blocks=4,
        epochs=2,
        search_epochs=1,
        warmup_epochs=1,
        finetune_epochs=1,
        random_trials=1,
        batch_size=256,
        lr=1e-2,
    ),
)


def test_tiny_run_resumes_and_writes_the_report(tmp_path):
    ds = _dataset()
    logs = []
    results = run_preset(PRESET, tmp_path / "runs", load=lambda spec: ds, log=logs.append)
    cells = results["tiny-rating-mf"]["cells"]
    assert len(cells) == 2 + 2 * 5 + 2 * 6  # uniform-K, 5 others at 1.0, 6 methods at 0.5
    for c in cells.values():
        if "skipped" not in c and c["budget"] == 0.5:
            # budgets are in bytes: every table, metadata included, fits half the dense bytes
            assert c["stored_bytes"] <= 0.5 * 4 * ds.num_features * 8
    again = run_preset(PRESET, tmp_path / "runs", load=lambda spec: ds, log=logs.append)
    assert again["tiny-rating-mf"]["cells"] == cells
    assert any("24 already done" in line for line in logs)

    doc = write_report(
        results, PRESET, "tiny", tmp_path / "runs", tmp_path / "docs" / "results.md", command="x"
    )
    text = doc.read_text()
    assert "## tiny-rating-mf: t, rating, mf" in text
    assert "| method | 1 | 0.5 |" in text
    assert "| mde@0.5 |" in text and "| dnis_rot_ft |" in text and " ± " in text
    assert "**" in text  # the best mean of a column is marked
    assert "mixemb compare --data t --task rating --model mf" in text
    assert "--budget-unit bytes" in text and "--methods uniform,dnis,dnis_rot_ft" in text
    assert "DNIS search (warm start + search, once)" in text
    assert "uniform grid (all budgets, total)" in text
    assert "| 0.5 | " in text.split("mean kept dimension per frequency block")[1]
    assert "torch: " + torch.__version__ in text and "cpu count" in text
    assert (tmp_path / "docs" / "results" / "tiny-rating-mf.png").exists() or (
        "plot skipped" in text
    )


def test_report_only_reads_results_json(tmp_path, monkeypatch):
    import mixemb.results as results_mod

    monkeypatch.setitem(results_mod.PRESETS, "tiny", PRESET)
    doc = tmp_path / "r.md"
    # nothing has run yet: the report says so instead of failing
    assert (
        main(["--preset", "tiny", "--report-only", "--out", str(tmp_path), "--doc", str(doc)]) == 0
    )
    assert "# Results" in doc.read_text() and "tiny-rating-mf" not in doc.read_text()
    # a --note is the report's paragraph, printed once, not again inside the command
    note = "Ran on 2 cores while 'benchmarks' paused it."
    argv = ["--preset", "tiny", "--report-only", "--out", str(tmp_path), "--doc", str(doc)]
    assert main([*argv, "--note", note]) == 0
    text = doc.read_text()
    assert text.count("benchmarks") == 1 and "--note '<the paragraph under the methods>'" in text


def test_dnis_dims_come_from_dnis_ft_and_plain_dnis_only_without_it():
    from mixemb.results import dnis_dims_table

    def cell(method, dims, seed=0):
        return {"method": method, "budget": 0.2, "seed": seed, "block_mean_dims": dims}

    only_ft = {"cells": {"a": cell("dnis_ft", [8.0, 2.0]), "b": cell("uniform", [12.0, 12.0])}}
    assert "| 0.2 | 8.0 | 2.0 |" in dnis_dims_table(only_ft)
    # plain dnis first in the file: dnis_ft still wins its (budget, seed)
    both = {"cells": {"c": cell("dnis", [6.0, 4.0]), "a": cell("dnis_ft", [8.0, 2.0])}}
    assert "| 0.2 | 8.0 | 2.0 |" in dnis_dims_table(both)
    # seed 1 has only a plain dnis cell: it counts, averaged with seed 0's dnis_ft
    mixed = {**both["cells"], "d": cell("dnis", [4.0, 6.0], seed=1)}
    assert "| 0.2 | 6.0 | 4.0 |" in dnis_dims_table({"cells": mixed})
    assert dnis_dims_table({"cells": {"b": cell("uniform", [12.0, 12.0])}}).startswith("no DNIS")


def _cell(method, budget, seed, value, seconds=10.0, **extra):
    return {
        "method": method,
        "budget": budget,
        "seed": seed,
        "test": {"mse": value},
        "kept_params": 1,
        "stored_bytes": 1,
        "seconds": seconds,
        **extra,
    }


def test_summary_names_the_smallest_budget_that_stays_within_half_a_percent():
    from mixemb.results import smallest_budgets, summary_table

    ref = 0.80  # uniform-K; within 0.5 % means mse <= 0.804
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
        _cell("uniform", 1.0, 2, ref),  # an unfinished grid seed: not in the timing
    ]
    results = {"cells": {str(i): c for i, c in enumerate(cells)}, "config": {"k": 10}}
    hits = smallest_budgets(results, "rating", 10)
    assert hits["uniform"] == (0.5, 0.803, 2)
    assert hits["dnis_ft"][0] == 0.5 and hits["dnis_rot_ft"][0] == 0.2
    assert hits["mde@0.3"] is None
    preset = Preset([Experiment("x", "t", "rating", "mf")], seeds=[0, 1])
    row = summary_table({"x": results}, preset).splitlines()[2]
    assert "| 0.8000 (n=3) |" in row and "| 50% (0.8000, n=1) |" in row
    assert "20% (0.8040, n=1): `dnis_rot_ft`" in row
    assert "50% (0.8030, n=2): `uniform`" in row
    # search: seed 0's dnis_ft search (not dnis_rot_ft's, run elsewhere); grid: seeds 0 and
    # 1, 3 budgets x 10 s
    assert "5 s vs 30 s (6.0× less)" in row
    # a seed with no dnis_ft cell: the mean of its other DNIS cells' searches
    from mixemb.results import _search_seconds

    only_variants = [
        _cell("dnis_rot_ft", 1.0, 1, 0.79, search_seconds=8.0),
        _cell("dnis", 1.0, 1, 0.79, search_seconds=12.0),
    ]
    extra = {str(len(cells) + i): c for i, c in enumerate(only_variants)}
    both = {"cells": {**results["cells"], **extra}, "config": results["config"]}
    assert _search_seconds(both) == {0: 5.0, 1: 10.0}


def test_time_matched_table_lists_given_and_used_seconds_and_trials():
    from mixemb.results import time_matched_table

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


def test_compare_command_carries_the_experiments_data_options(tmp_path):
    """The printed ``mixemb compare`` line loads the same data as the preset's run."""
    import shlex

    from mixemb.cli import _dataset_spec, build_parser
    from mixemb.results import compare_command

    exp = Experiment("fm-side", "movielens-1m", "rating", "fm", data_kwargs={"side_fields": True})
    line = compare_command(PRESET, exp, tmp_path)
    args = build_parser().parse_args(shlex.split(line)[1:])
    spec = _dataset_spec(args)
    assert spec["side_fields"] is True and spec["task"] == "rating"
    plain = build_parser().parse_args(
        shlex.split(compare_command(PRESET, PRESET.experiments[0], tmp_path))[1:]
    )
    assert "side_fields" not in _dataset_spec(plain)


def _results(values: dict[str, float]) -> dict:
    """A results.json dict: uniform-K and dnis_ft at budgets 1 and 0.5, seeds 0 and 1."""
    cells = [
        _cell(m, b, s, v + 0.001 * s, search_seconds=5.0, block_mean_dims=[4.0, 2.0])
        for (m, b), v in values.items()
        for s in (0, 1)
    ]
    return {"cells": {str(i): c for i, c in enumerate(cells)}, "config": {"k": 10}}


# two experiments of 8 planned cells each: uniform-K and dnis_ft at budgets 1 and 0.5
TWO = Preset(
    [Experiment("a", "t", "rating", "mf"), Experiment("b", "t", "rating", "fm")],
    seeds=[0, 1],
    budgets=[1.0, 0.5],
    methods=["uniform", "dnis_ft"],
)


def test_report_keeps_sections_of_experiments_without_cells_marked_carried_over(tmp_path):
    """``--only`` / lost cells: an experiment with no cells keeps its section and summary row
    from the page being replaced, marked; one with cells is regenerated; the mark is not
    repeated when the page is rewritten again."""
    preset, doc, out = TWO, tmp_path / "results.md", tmp_path / "cells"
    old = {("uniform", 1.0): 0.7, ("uniform", 0.5): 0.71, ("dnis_ft", 0.5): 0.9}
    write_report({"a": _results(old), "b": _results(old)}, preset, "p", out, doc, command="x")
    first = doc.read_text()
    assert "0.9005 ± 0.0007 (2)" in first and CARRIED not in first
    new = {("uniform", 1.0): 0.6, ("uniform", 0.5): 0.61, ("dnis_ft", 0.5): 0.602}
    for _ in range(2):  # b's cells are gone: its section is kept, a's is rewritten
        write_report({"a": _results(new)}, preset, "p", out, doc, command="x")
        text = doc.read_text()
        sections = text.split("\n## ")
        a = next(s for s in sections if s.startswith("a: "))
        b = next(s for s in sections if s.startswith("b: "))
        assert "0.6025 ± 0.0007 (2)" in a and "0.9005" not in a
        assert "0.9005 ± 0.0007 (2)" in b and b.count(CARRIED.capitalize()) == 1
        assert f"--only b --out {out}" in b
        rows = text.split("\n## Summary\n")[1].split("\n## ")[0]
        assert "| a | mse | 0.6005 (n=2) | 50% (0.6025, n=2) |" in rows
        assert f"| b ({CARRIED}) | mse | 0.7005 (n=2) | never |" in rows
        assert "except in the sections marked *carried over* (b)" in text
        assert "mixemb compare --data t --task rating --model fm" in text  # b's command
    # b's rerun has every planned cell: regenerated, no mark left
    complete = {**new, ("dnis_ft", 1.0): 0.6}
    write_report({"a": _results(new), "b": _results(complete)}, preset, "p", out, doc, command="x")
    assert CARRIED not in doc.read_text() and "0.9005" not in doc.read_text()


def test_carried_over_section_stays_until_its_rerun_has_every_planned_cell(tmp_path):
    """A rerun committed seed by seed: while it lacks planned cells its experiment keeps the
    carried-over section (the mark counts the cells done); once complete it is regenerated.
    A section that was not carried over is regenerated from partial cells as before."""
    preset, doc, out = TWO, tmp_path / "results.md", tmp_path / "cells"
    old = {("uniform", 1.0): 0.7, ("uniform", 0.5): 0.71, ("dnis_ft", 1.0): 0.8}
    old[("dnis_ft", 0.5)] = 0.9
    write_report({"a": _results(old), "b": _results(old)}, preset, "p", out, doc, command="x")
    write_report({"a": _results(old)}, preset, "p", out, doc, command="x")  # b carried over
    new = {("uniform", 1.0): 0.6, ("uniform", 0.5): 0.61, ("dnis_ft", 1.0): 0.62}
    partial = _results(new)  # seeds 0 and 1 of three methods: 6 of the 8 planned cells
    partial_a = _results(new)
    for _ in range(2):  # and idempotent
        write_report({"a": partial_a, "b": partial}, preset, "p", out, doc, command="x")
        text = doc.read_text()
        b = next(s for s in text.split("\n## ") if s.startswith("b: "))
        a = next(s for s in text.split("\n## ") if s.startswith("a: "))
        assert "0.9005 ± 0.0007 (2)" in b and b.count(CARRIED.capitalize()) == 1
        assert "is not finished (6 of 8 planned cells)" in b
        assert f"--only b --out {out}` finishes it." in b
        assert "0.6005 ± 0.0007 (2)" in a and CARRIED not in a  # a was not carried over
        assert "except in the sections marked *carried over* (b)" in text
        rows = text.split("\n## Summary\n")[1].split("\n## ")[0]
        assert f"| b ({CARRIED}) | mse | 0.7005 (n=2) |" in rows
    # a cell recorded as skipped counts as done
    partial["cells"]["x"] = {"method": "dnis_ft", "budget": 0.5, "seed": 0, "skipped": "no"}
    write_report({"a": partial_a, "b": partial}, preset, "p", out, doc, command="x")
    assert "(7 of 8 planned cells)" in doc.read_text()
    partial["cells"]["y"] = _cell("dnis_ft", 0.5, 1, 0.63, block_mean_dims=[4.0, 2.0])
    write_report({"a": partial_a, "b": partial}, preset, "p", out, doc, command="x")
    text = doc.read_text()
    assert CARRIED not in text and "0.9005" not in text
    b = next(s for s in text.split("\n## ") if s.startswith("b: "))
    assert "0.6300 ± 0.0000 (1)" in b  # dnis_ft 0.5 from the one seed that ran it


def test_note_file_is_the_reports_paragraph(tmp_path, monkeypatch):

    import mixemb.results as results_mod

    monkeypatch.setitem(results_mod.PRESETS, "tiny", PRESET)
    note, doc = tmp_path / "note.md", tmp_path / "r.md"
    note.write_text("Ran on 2 cores, cells of seeds 0-1.\n")
    argv = ["--preset", "tiny", "--report-only", "--out", str(tmp_path), "--doc", str(doc)]
    assert main([*argv, "--note-file", str(note)]) == 0
    assert "Ran on 2 cores, cells of seeds 0-1.\n\n## Machine" in doc.read_text()
    with pytest.raises(SystemExit):
        main([*argv, "--note-file", str(tmp_path / "missing.md")])
    with pytest.raises(SystemExit):
        main([*argv, "--note-file", str(note), "--note", "two"])


def test_plots_are_skipped_with_a_warning_when_matplotlib_is_missing(tmp_path, monkeypatch):
    import sys

    from mixemb.search.compare import plot_results

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    png = tmp_path / "r.png"
    with pytest.warns(RuntimeWarning, match="matplotlib is not installed"):
        assert plot_results({"cells": {}}, "rating", 10, png) is False
    assert not png.exists()
