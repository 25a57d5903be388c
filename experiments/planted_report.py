"""The planted benchmark's tables, from the instance files ``experiments/planted.py`` wrote.

Per instance and id order (α blocks over all ids, or per field): the verdict at each
accuracy budget (:func:`experiments.verdict.verdict_row`: the DNIS-family method best on
validation against the other method best on validation, on test, 2 combined standard
errors over seeds), test AUC mean ± std over seeds per method, and recovery (Spearman of
kept dims with the planted r per α block, per field and per feature) averaged over seeds.
The same verdict over both orders at once (every method of either order a candidate)
answers "does the search beat every baseline, whatever their blocks?"::

    python -m experiments.planted_report docs/planted > /tmp/planted_tables.md
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from experiments.tables import md_table
from experiments.verdict import verdict_row, verdict_table

ORDER_SUFFIX = {"frequency": "", "field": " (by field)"}
SCORES = ("block", "field", "feature")


def load_instances(folder: Path) -> dict[tuple[str, str], list[dict]]:
    """(instance, id order) → that instance's files (one per seed), seed order."""
    out: dict[tuple[str, str], list[dict]] = {}
    for path in sorted(Path(folder).glob("*.json")):
        data = json.loads(path.read_text())
        key = (data["instance"], data.get("id_order", "frequency"))
        out.setdefault(key, []).append(data)
    for runs in out.values():
        runs.sort(key=lambda d: d.get("seed", d["dataset"]["seed"]))
    return out


def as_results(runs: list[dict], suffix: str = "") -> dict:
    """The seeds' accuracy rows as one comparison's ``{"cells": …}`` (method names + suffix)."""
    cells = {}
    for data in runs:
        seed = data.get("seed", data["dataset"]["seed"])
        for row in data["accuracy"]:
            method = row["method"] + suffix
            cells[f"{method}|{row['budget']:g}|{seed}"] = {
                "method": method,
                "budget": row["budget"],
                "valid": {"auc": row["valid_auc"]},
                "test": {"auc": row["test_auc"]},
            }
    return {"cells": cells}


def accuracy_table(results: dict, budgets: list[float]) -> str:
    """Test AUC mean ± std (seeds) per method and budget."""
    per: dict[str, dict[float, list[float]]] = {}
    for c in results["cells"].values():
        per.setdefault(c["method"], {}).setdefault(float(c["budget"]), []).append(c["test"]["auc"])
    rows = []
    for method, by_budget in per.items():
        row = [f"`{method}`"]
        for b in budgets:
            xs = by_budget.get(b, [])
            sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
            row.append(f"{statistics.fmean(xs):.4f} ± {sd:.4f} ({len(xs)})" if xs else "–")
        rows.append(row)
    return md_table(["method", *(f"{b:g}" for b in budgets)], rows)


def recovery_table(runs: list[dict]) -> str:
    """Spearman of kept dims with the planted r, mean over seeds: block / field / feature."""
    budgets = list(runs[0]["recovery"])
    names = list(runs[0]["recovery"][budgets[0]])
    rows = []
    for name in names:
        row = [name]
        for b in budgets:
            got = [d["recovery"][b][name] for d in runs if name in d["recovery"].get(b, {})]
            row.append(
                " / ".join(
                    f"{statistics.fmean(g[s] for g in got):+.2f}"
                    if all(s in g for g in got)
                    else "–"
                    for s in SCORES
                )
            )
        rows.append(row)
    return md_table(["allocation", *(f"{b} (block / field / feature)" for b in budgets)], rows)


def render(folder: Path) -> str:
    """Markdown: per instance and order, the verdict, accuracy and recovery tables; then
    per instance, the verdict over both orders."""
    groups = load_instances(folder)
    out = []
    by_instance: dict[str, list] = {}
    for (instance, order), runs in groups.items():
        budgets = sorted({r["budget"] for d in runs for r in d["accuracy"]}, reverse=True)
        small = [b for b in budgets if b < 1]
        res = as_results(runs)
        rows = [verdict_row(res, instance + ORDER_SUFFIX[order], "ctr", b) for b in small]
        seeds = [d.get("seed", d["dataset"]["seed"]) for d in runs]
        out.append(f"### {instance}, α blocks by {order} (seeds {seeds})\n")
        if any(rows):
            out.append(verdict_table([r for r in rows if r is not None]))
        out.append("\nTest AUC, mean ± std over seeds (n):\n\n" + accuracy_table(res, budgets))
        out.append("\nRecovery, Spearman with the planted r (mean over seeds):\n\n")
        out.append(recovery_table(runs))
        by_instance.setdefault(instance, []).append((order, runs, small))
    for instance, parts in by_instance.items():
        if len(parts) < 2:
            continue
        merged = {"cells": {}}
        for order, runs, _ in parts:
            merged["cells"].update(as_results(runs, ORDER_SUFFIX[order])["cells"])
        small = sorted({b for _, _, s in parts for b in s}, reverse=True)
        rows = [verdict_row(merged, instance, "ctr", b) for b in small]
        out.append(f"\n### {instance}, every method of either order a candidate\n")
        out.append(verdict_table([r for r in rows if r is not None]))
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", nargs="?", default="docs/planted")
    print(render(Path(p.parse_args(argv).folder)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
