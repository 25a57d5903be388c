"""experiments/planted.py and its report on a tiny instance: files per (order, seed), the
verdict over seeds, recovery per block, field and feature."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments import planted, planted_report  # noqa: E402

TINY = ["--scale", "0.001", "--rows", "3000", "--dim", "16", "--planted-dim", "4"]


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    folder = tmp_path_factory.mktemp("planted")
    argv = [
        "--out", str(folder / "out"), "--runs", str(folder / "runs"), *TINY,
        "--instances", "field-axis", "--id-orders", "field", "--seeds", "0,1",
        "--methods", "uniform,dnis_blockmask_ft", "--recovery-budgets", "0.5",
        "--accuracy-budgets", "0.2", "--quiet",
    ]  # fmt: skip
    assert planted.main(argv) == 0
    return folder / "out"


def test_one_file_per_order_and_seed(out):
    names = sorted(p.name for p in out.glob("*.json"))
    assert names == ["field-axis-by-field-s1.json", "field-axis-by-field.json"]
    data = json.loads((out / "field-axis-by-field-s1.json").read_text())
    assert data["id_order"] == "field" and data["seed"] == 1
    assert data["dataset"]["id_order"] == "field" and data["dataset"]["seed"] == 1
    per = data["recovery"]["0.5"]
    assert {"dnis", "magnitude", "dnis_blockmask", "magnitude_blockmask"} <= set(per)
    for scores in per.values():
        assert {"block", "field", "feature"} <= set(scores)
    assert {r["method"] for r in data["accuracy"]} == {"uniform", "dnis_blockmask_ft"}


def test_report_gives_the_verdict_over_seeds(out):
    page = planted_report.render(out)
    assert "### field-axis, α blocks by field (seeds [0, 1])" in page
    verdict = [ln for ln in page.splitlines() if ln.startswith("| field-axis (by field) | 20 %")]
    assert len(verdict) == 1 and "`dnis_blockmask_ft`" in verdict[0] and "`uniform`" in verdict[0]
    assert "(2) |" in page  # two seeds per accuracy cell


def test_existing_files_are_skipped_and_bad_arguments_refused(out, capsys):
    argv = ["--out", str(out), *TINY, "--instances", "field-axis", "--id-orders", "field"]
    assert planted.main([*argv, "--seeds", "1", "--quiet"]) == 0
    assert "exists: skipped" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--id-orders must be from"):
        planted.main([*argv, "--id-orders", "alphabet"])
    with pytest.raises(SystemExit, match="unknown methods"):
        planted.main([*argv, "--methods", "nope"])
