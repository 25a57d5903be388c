"""Run a preset's cells into ``<out>/<experiment>/results.json``, resumable and shareable.

Per experiment, :func:`mixemb.methods.compare` runs every planned (method, budget, seed)
cell that the file lacks and merges it into the file as soon as it finishes, so a killed
run resumes where it stopped. Several processes may share one ``--out`` (one per seed or
per group of methods, to use more cores): see :mod:`experiments.shared_out`. Every
experiment's config is checked against its file (or written there) before the first cell
runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from experiments.presets import Experiment, Preset
from experiments.shared_out import SharedResults
from mixemb.data import load_dataset
from mixemb.methods import MethodConfig, compare, parse_method


def method_config(exp: Experiment) -> MethodConfig:
    return MethodConfig(**exp.config)


def header(exp: Experiment) -> dict:
    """What identifies an experiment's results.json: dataset spec, model, full config
    (what :func:`mixemb.methods.compare` writes there)."""
    return {"dataset": exp.dataset_spec, "model": exp.model, "config": asdict(method_config(exp))}


def check_methods(preset: Preset) -> None:
    """ValueError (one line) naming every method of the preset that does not parse."""
    bad = []
    for exp in preset.experiments:
        for m in exp.methods:
            try:
                parse_method(m)
            except ValueError as exc:
                bad.append(f"{exp.name}: {exc}")
    if bad:
        raise ValueError("; ".join(bad))


def run_preset(
    preset: Preset,
    out: str | Path,
    *,
    load: Callable[[dict], object] = lambda spec: load_dataset(**spec),
    log: Callable[[str], None] = print,
) -> dict[str, dict]:
    """Run (or resume) every experiment of ``preset`` under ``out``; returns name →
    results. Every method name and every experiment's config is checked first (a
    ValueError, :class:`~experiments.shared_out.ConfigMismatch` for a config other than
    the one in an existing results.json), before any cell runs."""
    check_methods(preset)
    paths = {e.name: Path(out) / e.name / "results.json" for e in preset.experiments}
    for exp in preset.experiments:
        SharedResults(paths[exp.name], header(exp)).reserve()
    results = {}
    for exp in preset.experiments:
        log(f"== {exp.name}: {exp.data} {exp.task} {exp.model} -> {paths[exp.name].parent}")
        results[exp.name] = compare(
            load(exp.dataset_spec),
            exp.dataset_spec,
            exp.model,
            method_config(exp),
            methods=exp.methods,
            budgets=preset.budgets,
            seeds=preset.seeds,
            out=paths[exp.name].parent,
            log=log,
            store=SharedResults,
        )
    return results
