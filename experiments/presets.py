"""The study presets of ``presets.toml`` as :class:`Preset` / :class:`Experiment` objects.

Every experiment comes out resolved: its methods (its own, else the preset's, else the
defaults') and its config (the defaults', then the preset's, then its own MethodConfig
fields, plus ``model_kwargs``), so the runner and the report read one object.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the same parser, from PyPI
    import tomli as tomllib

PRESETS_FILE = Path(__file__).with_name("presets.toml")

_PRESET_KEYS = {"seeds", "budgets", "verdict_budgets", "methods", "config", "experiments"}
_EXPERIMENT_KEYS = {
    "name",
    "data",
    "task",
    "model",
    "data_kwargs",
    "model_kwargs",
    "config",
    "methods",
    "note",
    "verdict",
}


@dataclass(frozen=True)
class Experiment:
    """One (data, task, model) combination and the settings of its cells.

    config: MethodConfig fields (``model_kwargs`` included); methods: the cells' methods,
    in the order the tables list them; verdict: whether the page's verdict counts it.
    """

    name: str
    data: str
    task: str
    model: str
    methods: list[str]
    config: dict
    data_kwargs: dict = field(default_factory=dict)
    note: str = ""
    verdict: bool = True

    @property
    def dataset_spec(self) -> dict:
        """The ``load_dataset`` keyword arguments, as stored in results.json."""
        return {"name": self.data, "task": self.task, "seed": 0, "min_count": 1, **self.data_kwargs}


@dataclass(frozen=True)
class Preset:
    name: str
    experiments: list[Experiment]
    seeds: list[int]
    budgets: list[float]
    verdict_budgets: list[float]

    def only(self, names: list[str]) -> Preset:
        """The preset restricted to ``names`` (every experiment when empty)."""
        unknown = sorted(set(names) - {e.name for e in self.experiments})
        if unknown:
            known = ", ".join(e.name for e in self.experiments)
            raise ValueError(f"preset {self.name!r} has no experiment {unknown}; it has {known}")
        if not names:
            return self
        return replace(self, experiments=[e for e in self.experiments if e.name in names])

    def with_methods(self, methods: list[str]) -> Preset:
        """Every experiment running ``methods`` (finished cells of others are kept)."""
        return replace(self, experiments=[replace(e, methods=methods) for e in self.experiments])


def _checked(table: dict, allowed: set[str], where: str) -> dict:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; allowed: {sorted(allowed)}")
    return table


def _experiment(raw: dict, preset: dict, defaults: dict, where: str) -> Experiment:
    raw = _checked(raw, _EXPERIMENT_KEYS, where)
    missing = [k for k in ("name", "data", "task", "model") if k not in raw]
    if missing:
        raise ValueError(f"{where}: missing {missing}")
    config = {
        **defaults.get("config", {}),
        **preset.get("config", {}),
        **raw.get("config", {}),
        "model_kwargs": dict(raw.get("model_kwargs", {})),
    }
    methods = raw.get("methods") or preset.get("methods") or defaults.get("methods")
    if not methods:
        raise ValueError(f"{where}: no methods (none in it, its preset or [defaults])")
    return Experiment(
        name=raw["name"],
        data=raw["data"],
        task=raw["task"],
        model=raw["model"],
        methods=list(methods),
        config=config,
        data_kwargs=dict(raw.get("data_kwargs", {})),
        note=raw.get("note", ""),
        verdict=bool(raw.get("verdict", True)),
    )


def parse_presets(text: str, source: str = "presets.toml") -> dict[str, Preset]:
    """name → Preset from the TOML ``text`` (``source`` names it in errors)."""
    data = tomllib.loads(text)
    defaults = data.get("defaults", {})
    presets = {}
    for name, raw in data.get("presets", {}).items():
        where = f"{source} [presets.{name}]"
        raw = _checked(raw, _PRESET_KEYS, where)
        if not raw.get("seeds"):
            raise ValueError(f"{where}: no seeds")
        experiments = [
            _experiment(e, raw, defaults, f"{where} experiment {i}")
            for i, e in enumerate(raw.get("experiments", []))
        ]
        names = [e.name for e in experiments]
        if len(set(names)) != len(names):
            raise ValueError(f"{where}: experiment names repeat: {names}")
        presets[name] = Preset(
            name=name,
            experiments=experiments,
            seeds=[int(s) for s in raw["seeds"]],
            budgets=[float(b) for b in raw.get("budgets", defaults.get("budgets", []))],
            verdict_budgets=[
                float(b) for b in raw.get("verdict_budgets", defaults.get("verdict_budgets", []))
            ],
        )
    return presets


def load_presets(path: Path = PRESETS_FILE) -> dict[str, Preset]:
    """name → Preset from ``path`` (default: experiments/presets.toml)."""
    return parse_presets(Path(path).read_text(encoding="utf-8"), str(path))
