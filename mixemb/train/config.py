"""Building one stage's config from another's: the fields they share, by name."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from typing import Any, TypeVar

C = TypeVar("C")


def config_from(cls: type[C], source: Any, **overrides: Any) -> C:
    """A ``cls`` dataclass from the fields ``source`` shares with it, then ``overrides``.

    source: a dataclass instance or a mapping (e.g. a config saved with ``asdict``); its
        fields that ``cls`` lacks are ignored, and fields of ``cls`` it lacks keep their
        defaults.
    ``config_from(TrainConfig, search_config, epochs=2)`` is the search's warm start.
    """
    if is_dataclass(source) and not isinstance(source, type):
        values = {f.name: getattr(source, f.name) for f in fields(source)}
    elif isinstance(source, Mapping):
        values = dict(source)
    else:
        raise TypeError(f"source must be a dataclass or a mapping, got {type(source).__name__}")
    names = {f.name for f in fields(cls)}
    unknown = set(overrides) - names
    if unknown:
        raise TypeError(f"{cls.__name__} has no field(s) {sorted(unknown)}")
    return cls(**{**{k: v for k, v in values.items() if k in names}, **overrides})
