"""docs/results.md is what the committed cells render to.

The page is rendered again from docs/results/cells with experiments/presets.toml's
``quick`` preset and must equal the committed page, less the plot lines (matplotlib is
optional): a cell changed or added without rewriting the page, or a page edited by hand,
fails here. ``python -m experiments report`` rewrites it.
"""

from __future__ import annotations

import re
from pathlib import Path

from experiments.presets import load_presets
from experiments.report import DEFAULT_OUT, load_cells, render

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
