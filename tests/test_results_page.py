"""docs/results.md agrees with the committed cells it was written from.

Every experiment with cells under docs/results/cells is rendered again from them (the
other sections, and those of unfinished reruns, are carried over, as on the page) and its
section and summary row must be the page's, less the plot line (matplotlib is optional) —
so a cell changed or added without rewriting the page, or a page edited by hand, fails here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mixemb.results import PRESETS, page_sections, page_summary_rows, write_report

ROOT = Path(__file__).resolve().parents[1]
PAGE, CELLS = ROOT / "docs" / "results.md", ROOT / "docs" / "results" / "cells"
PRESET = PRESETS["quick"]
WITH_CELLS = [e.name for e in PRESET.experiments if (CELLS / e.name / "results.json").exists()]


def _without_plot(lines: list[str]) -> list[str]:
    return [x for x in lines if not x.startswith(("![", "(plot skipped"))]


@pytest.mark.skipif(not WITH_CELLS, reason="no committed cells")
def test_page_sections_are_rendered_from_the_committed_cells(tmp_path):
    doc = tmp_path / "results.md"
    shutil.copy(PAGE, doc)
    results = {n: json.loads((CELLS / n / "results.json").read_text()) for n in WITH_CELLS}
    out = Path("docs/results/cells")
    write_report(results, PRESET, "quick", out, doc, command="x")
    page, again = PAGE.read_text(), doc.read_text()
    for name in WITH_CELLS:
        assert _without_plot(page_sections(again)[name]) == _without_plot(
            page_sections(page)[name]
        ), f"docs/results.md's {name} section is not what its cells give: rewrite the page"
        assert page_summary_rows(again)[name] == page_summary_rows(page)[name]
