"""The page's verdict: per experiment and small budget, does DNIS beat the best other method?

At each budget, among the methods with at least two seeds there: the DNIS-family method
(name starting ``dnis``) with the best mean *validation* metric faces the other method
with the best mean validation metric (ties go to the later name); both are compared on
mean *test* metric. The gap is signed so that a positive gap favours DNIS; its uncertainty
is 2 combined standard errors over seeds, sqrt(s_d²/n_d + s_o²/n_o); beyond it the gap is
a win or a loss, within it a tie. The winner is the method best on validation overall.

By bytes, the cells are those of the experiments run at byte budgets; by parameters, each
experiment's cells of a parameter budget (:mod:`experiments.by_params`), and each row
also gives the parameters the two compared methods keep, as a fraction of uniform-K's.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from experiments.by_params import params_results
from experiments.presets import Preset
from experiments.tables import md_table
from mixemb.metrics import primary_metric

MIN_SEEDS = 2  # a standard error needs two seeds


@dataclass(frozen=True)
class VerdictRow:
    experiment: str
    budget: float
    metric: str
    higher_is_better: bool
    winner: str  # best mean validation metric of all methods
    dnis: str
    dnis_test: float
    other: str
    other_test: float
    gap: float  # test metric, DNIS minus other, signed so that > 0 favours DNIS
    two_se: float
    dnis_kept: float | None = None  # mean kept parameters over seeds / N·K (by parameters)
    other_kept: float | None = None

    @property
    def result(self) -> str:
        if self.gap > self.two_se:
            return "win"
        return "loss" if self.gap < -self.two_se else "tie"


def verdict_row(
    results: dict, name: str, task: str, budget: float, size: int | None = None
) -> VerdictRow | None:
    """The verdict at ``budget`` from one experiment's results; None without a DNIS and a
    non-DNIS method of at least two seeds there. ``size``: N·K, to give the compared
    methods' mean kept parameters as a fraction of it."""
    k = results.get("config", {}).get("k", 10)
    metric, direction = primary_metric(task, k)
    sign = 1 if direction == "max" else -1
    runs: dict[str, list[tuple[float, float]]] = {}
    kept: dict[str, list[int | None]] = {}
    for c in results["cells"].values():
        valid, test = c.get("valid") or {}, c.get("test") or {}
        if abs(float(c["budget"]) - budget) < 1e-9 and metric in valid and metric in test:
            runs.setdefault(c["method"], []).append((valid[metric], test[metric]))
            kept.setdefault(c["method"], []).append(c.get("kept_params"))
    runs = {m: xs for m, xs in runs.items() if len(xs) >= MIN_SEEDS}

    def best(names: list[str]) -> str | None:
        scored = [(sign * statistics.mean(v for v, _ in runs[m]), m) for m in names]
        return max(scored)[1] if scored else None

    dnis = best([m for m in runs if m.startswith("dnis")])
    other = best([m for m in runs if not m.startswith("dnis")])
    if dnis is None or other is None:
        return None
    td, to = [t for _, t in runs[dnis]], [t for _, t in runs[other]]
    se = math.sqrt(statistics.variance(td) / len(td) + statistics.variance(to) / len(to))

    def kept_fraction(method: str) -> float | None:
        if not size or None in kept[method]:
            return None
        return statistics.mean(kept[method]) / size

    return VerdictRow(
        experiment=name,
        budget=budget,
        metric=metric,
        higher_is_better=sign == 1,
        winner=best(list(runs)),
        dnis=dnis,
        dnis_test=statistics.mean(td),
        other=other,
        other_test=statistics.mean(to),
        gap=sign * (statistics.mean(td) - statistics.mean(to)),
        two_se=2 * se,
        dnis_kept=kept_fraction(dnis),
        other_kept=kept_fraction(other),
    )


def verdict_rows(results: dict[str, dict], preset: Preset, unit: str) -> list[VerdictRow]:
    """Rows for the preset's verdict experiments at each of its verdict budgets, in
    ``unit``: "bytes" (the experiments run at byte budgets) or "params" (every
    experiment's cells of a parameter budget, :func:`~experiments.by_params.params_results`)."""
    if unit not in ("bytes", "params"):
        raise ValueError(f"unit must be 'bytes' or 'params', got {unit!r}")
    rows = []
    for exp in preset.experiments:
        res = results.get(exp.name)
        if res is None or not exp.verdict:
            continue
        size = None
        if unit == "params":
            res, size, _ = params_results(res)
        elif res.get("config", {}).get("budget_unit", "params") != unit:
            continue
        for b in preset.verdict_budgets:
            row = verdict_row(res, exp.name, exp.task, b, size)
            if row is not None:
                rows.append(row)
    return rows


def _pct(budget: float) -> str:
    return f"{budget * 100:g} %"


def _kept(frac: float | None) -> str:
    return "–" if frac is None else f"{frac * 100:.1f} %"


def verdict_table(rows: list[VerdictRow]) -> str:
    """The rows as a Markdown table; with a column of the compared methods' kept
    parameters where a row has them (the verdict by parameters)."""
    kept = any(r.dnis_kept is not None or r.other_kept is not None for r in rows)
    head = [
        "experiment",
        "budget",
        "metric",
        "best on validation",
        "DNIS: test",
        "best other: test",
        "DNIS's gap ± 2 SE",
        "DNIS",
    ] + (["kept params, DNIS / other (% of N·K)"] if kept else [])
    body = [
        [
            r.experiment,
            _pct(r.budget),
            f"{r.metric} {'↑' if r.higher_is_better else '↓'}",
            f"`{r.winner}`",
            f"`{r.dnis}` {r.dnis_test:.4f}",
            f"`{r.other}` {r.other_test:.4f}",
            f"{r.gap:+.4f} ± {r.two_se:.4f}",
            f"**{r.result}**" if r.result == "win" else r.result,
        ]
        + ([f"{_kept(r.dnis_kept)} / {_kept(r.other_kept)}"] if kept else [])
        for r in rows
    ]
    return md_table(head, body)


def verdict_summary(rows: list[VerdictRow], what: str) -> str:
    """The verdict's sentences for ``rows`` (``what``: the budget's unit, in words)."""
    if not rows:
        return f"No experiment has cells of at least two seeds at these fractions of {what}.\n"
    n = len(rows)
    counts = {r: sum(x.result == r for x in rows) for r in ("win", "tie", "loss")}
    wins = [f"{r.experiment} at {_pct(r.budget)}" for r in rows if r.result == "win"]
    experiments = list(dict.fromkeys(r.experiment for r in rows))
    won = {r.experiment for r in rows if r.result == "win"}
    budgets = sorted({r.budget for r in rows}, reverse=True)
    dnis_best = sum(r.winner == r.dnis for r in rows)
    return (
        f"At {' and '.join(_pct(b) for b in budgets)} of {what}, DNIS (its variant with the "
        "best validation metric) beats the best other method on test by more than 2 standard "
        f"errors in {counts['win']} of {n} (experiment, budget) pairs"
        + (f" ({', '.join(wins)})" if wins else "")
        + f", ties in {counts['tie']} and loses in {counts['loss']}: it wins at one of these "
        f"budgets in {len(won)} of {len(experiments)} experiments. The method best on "
        f"validation, the one a user would pick, is a DNIS variant in {dnis_best} of {n} pairs.\n"
    )
