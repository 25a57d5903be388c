"""``python -m experiments run|report``: the study behind docs/results.md.

``run`` runs (or resumes) the missing cells of a preset into ``OUT/<experiment>/results.json``
and then rewrites the page; ``report`` only rewrites the page from the cells. Several
``run`` processes may share one ``--out`` (e.g. ``--seeds 0`` and ``--seeds 1`` side by side,
one core each).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import replace

from experiments.presets import load_presets
from experiments.report import DEFAULT_DOC, DEFAULT_OUT, DEFAULT_PRESET, load_cells, write_report
from experiments.runner import run_preset


def _names(text: str | None) -> list[str]:
    return [x for x in (text or "").split(",") if x]


def _budgets(text: str) -> list[float]:
    """``--budgets`` as fractions in (0, 1]; ValueError (one line) naming a bad one."""
    out = []
    for b in _names(text):
        try:
            value = float(b)
        except ValueError:
            value = float("nan")
        if not 0 < value <= 1:
            raise ValueError(f"--budgets: {b!r} is not a fraction in (0, 1]")
        out.append(value)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in (
        ("run", "run the missing cells, then write the page"),
        ("report", "write the page from the cells"),
    ):
        s = sub.add_parser(name, help=help_)
        s.add_argument("--preset", default=DEFAULT_PRESET, help="a preset of presets.toml")
        s.add_argument("--out", default=str(DEFAULT_OUT), help="where the cells are")
        s.add_argument("--doc", default=str(DEFAULT_DOC), help="the page to write")
    run = sub.choices["run"]
    run.add_argument("--only", help="comma-separated experiment names")
    run.add_argument("--seeds", help="override the preset's seeds, e.g. 0,1")
    run.add_argument("--methods", help="override every experiment's methods")
    run.add_argument("--budgets", help="override the preset's budgets, e.g. 0.1,0.05")
    run.add_argument("--no-report", action="store_true", help="do not write the page")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        presets = load_presets()
        if args.preset not in presets:
            raise ValueError(f"no preset {args.preset!r}; presets: {', '.join(presets)}")
        preset = presets[args.preset]
        if args.command == "run":
            part = preset.only(_names(args.only))
            if args.seeds:
                part = replace(part, seeds=[int(s) for s in _names(args.seeds)])
            if args.budgets:
                part = replace(part, budgets=_budgets(args.budgets))
            if args.methods:
                part = part.with_methods(_names(args.methods))
            run_preset(part, args.out)
            if args.no_report:
                return 0
        doc = write_report(load_cells(preset, args.out), preset, args.out, args.doc)
    except ValueError as exc:
        print(f"python -m experiments {args.command}: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {doc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
