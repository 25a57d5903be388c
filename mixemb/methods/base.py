"""The Method interface, the registry, and the one parser of method names.

A method is a :class:`Method`: its name and a runner that returns one result cell.
A name may carry an argument after ``@``, parsed here and nowhere else:

* ``name@x`` for a method with ``parse`` (e.g. ``mde@0.5``): ``parse("0.5")`` gives the
  MethodConfig overrides of that cell ({"mde_exponent": 0.5});
* ``name@m`` for a ``time_matched`` method (e.g. ``random_blocks@dnis_ft``): it runs for
  the wall time of method m's cell at the same budget and seed; m must be a method that
  ``searches`` (its cells record ``search_seconds`` and ``prune_seconds``);
* a value dtype after ``:`` ending any of these (``uniform:fp16``, ``mde_blocks@0.3:int8``,
  ``dnis_ft:bf16``): the table is stored with fp16 / bf16 / int8 values
  (:mod:`mixemb.quant`), counted at their bytes, so a byte budget buys more dimensions.
  No suffix is fp32, every existing name's meaning. A time-matched method at a dtype
  matches m at the same dtype (``random_blocks@dnis_ft:fp16`` → ``dnis_ft:fp16``). A
  method stores the dtypes of its ``value_dtypes`` (ragged tables: no int8); another is
  NotApplicable, recorded as skipped.

:func:`run_method` runs one cell; :func:`register` adds a method (one line per method).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

from mixemb.data.schema import Dataset
from mixemb.methods.config import MethodConfig
from mixemb.prune import InfeasibleBudget
from mixemb.quant import VALUE_DTYPES

# runner(ds, model_name, cfg, budget, seed, log, **kw) -> cell; kw: time_budget (seconds)
# for a time-matched method, value_dtype (other than "fp32") for a method that stores one
Runner = Callable[..., dict]


class NotApplicable(InfeasibleBudget):
    """A method does not apply to this model (recorded as skipped, like a budget)."""


@dataclass(frozen=True)
class Method:
    """One method of a comparison.

    name: the method's name in cells and in ``--methods``.
    run: ``run(ds, model_name, cfg, budget, seed, log[, time_budget=s]) -> dict``, one
        cell at ``budget`` (a fraction of the uniform-K table, see MethodConfig.budget_unit);
        raises InfeasibleBudget (or NotApplicable) when it cannot run there.
    parse: the text after ``@`` → MethodConfig overrides of that cell (ValueError when
        malformed); None when the method takes no such argument.
    argument: how the argument is written in listings ("a" for ``mde@a``).
    time_matched: takes ``@m``, a method whose wall time it runs for.
    searches: its cells record search_seconds and prune_seconds (a time-matched method
        may take its wall time).
    configure: the cell's MethodConfig from the comparison's (``dnis_warm``: warm start =
        the plain trainer's epochs); None leaves it as it is.
    value_dtypes: the value dtypes its table may store (:data:`mixemb.quant.VALUE_DTYPES`);
        ``run`` takes ``value_dtype=`` when a cell's is not "fp32".
    """

    name: str
    run: Runner
    parse: Callable[[str], dict] | None = None
    argument: str = ""
    time_matched: bool = False
    searches: bool = False
    configure: Callable[[MethodConfig], MethodConfig] | None = None
    value_dtypes: tuple[str, ...] = ("fp32",)

    def __post_init__(self) -> None:
        if any(c in self.name for c in "@,:") or not self.name:
            raise ValueError(f"a method name has no '@', ',' or ':', got {self.name!r}")
        if "fp32" not in self.value_dtypes or not set(self.value_dtypes) <= set(VALUE_DTYPES):
            raise ValueError(
                f"{self.name}: value_dtypes must hold fp32 and only {', '.join(VALUE_DTYPES)}, "
                f"got {self.value_dtypes}"
            )
        if self.time_matched and self.parse is not None:
            raise ValueError(f"{self.name}: a time-matched method takes a method, not a value")


# name -> Method, in registration order (the order compare lists them in)
METHODS: dict[str, Method] = {}


def register(*methods: Method) -> None:
    """Add ``methods`` to the registry; a name may be registered once."""
    for method in methods:
        if method.name in METHODS:
            raise ValueError(f"method {method.name!r} is already registered")
        METHODS[method.name] = method


def unregister(name: str) -> Method:
    """Remove the method ``name`` from the registry; returns it."""
    return METHODS.pop(name)


def valid_names() -> str:
    """Every registered name and argument form, for error messages."""
    forms = [f"{m.name}@{m.argument}" for m in METHODS.values() if m.parse or m.time_matched]
    refs = [m.name for m in METHODS.values() if m.searches]
    tail = f" (m: {', '.join(refs)})" if any(m.time_matched for m in METHODS.values()) else ""
    dtypes = f"; each may end in :{'|:'.join(VALUE_DTYPES[1:])}"
    return ", ".join([*METHODS, *forms]) + tail + dtypes


def split_value_dtype(method: str) -> tuple[str, str]:
    """``"mde_blocks@0.3:int8"`` → ("mde_blocks@0.3", "int8"); without a suffix →
    (method, "fp32"). ValueError for an unknown dtype, or ``:fp32`` (write no suffix, so
    one cell has one name)."""
    name, colon, dtype = method.rpartition(":")
    if not colon:
        return method, "fp32"
    if dtype not in VALUE_DTYPES[1:]:
        raise ValueError(
            f"a method's value dtype is one of :{', :'.join(VALUE_DTYPES[1:])} (fp32 has no "
            f"suffix), got {method!r}"
        )
    return name, dtype


def value_dtype_of(method: str) -> str:
    """The value dtype of a method spec (``"uniform:fp16"`` → "fp16"; no suffix: "fp32")."""
    return split_value_dtype(method)[1]


def _split(method: str) -> tuple[Method, str | None]:
    """The registered Method of ``method`` and its argument (None without ``@``); the
    value dtype suffix is checked and left out."""
    base, at, arg = split_value_dtype(method)[0].partition("@")
    if base not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {valid_names()}")
    found = METHODS[base]
    if not at:
        return found, None
    if found.time_matched:
        ref = METHODS.get(arg)
        if ref is None or not ref.searches:
            refs = ", ".join(m.name for m in METHODS.values() if m.searches)
            raise ValueError(
                f"{base}@m matches the wall time of a DNIS method m ({refs}), got {method!r}"
            )
    elif found.parse is None:
        takes = ", ".join(
            f"{m.name}@{m.argument}" for m in METHODS.values() if m.parse or m.time_matched
        )
        raise ValueError(f"only {takes} take a parameter, got {method!r}")
    return found, arg


def time_reference(method: str) -> str | None:
    """The method whose wall time ``method`` matches (``random_blocks@dnis_ft`` →
    ``dnis_ft``; ``random_blocks@dnis_ft:fp16`` → ``dnis_ft:fp16``), or None."""
    found, arg = _split(method)
    if not found.time_matched:
        return None
    dtype = value_dtype_of(method)
    return arg if dtype == "fp32" else f"{arg}:{dtype}"


def parse_method(method: str) -> tuple[str, dict]:
    """``"mde@0.5"`` → ("mde", {"mde_exponent": 0.5}); ``"random_blocks@dnis_ft"`` →
    ("random_blocks", {}) (see :func:`time_reference`); any other registered name →
    (name, {}); a value dtype suffix is checked and left out (:func:`value_dtype_of`).
    Raises ValueError for an unknown name, dtype or a malformed argument."""
    found, arg = _split(method)
    if arg is None or found.time_matched:
        return found.name, {}
    return found.name, found.parse(arg)


def dnis_wall_seconds(cell: dict) -> float:
    """The wall time of a ``searches`` method's cell (DNIS's for one budget): the shared
    search plus the budget's own time (``prune_seconds``: prune, + fine-tune;
    ``dnis_blocks``: + training); a time-matched method runs for it. Cells
    written before ``prune_seconds`` was recorded count their whole time instead, which
    also holds the search when that cell ran it: at most twice the search too much, in
    the time-matched baseline's favour."""
    if "search_seconds" not in cell:
        raise ValueError(f"{cell.get('method')!r} cells carry no search time to match")
    return cell["search_seconds"] + cell.get("prune_seconds", cell["seconds"])


def _quiet(_: str) -> None:
    pass


def run_method(
    method: str,
    ds: Dataset,
    model_name: str,
    cfg: MethodConfig,
    budget: float,
    seed: int,
    log: Callable[[str], None] = _quiet,
    time_budget: float | None = None,
) -> dict:
    """One cell: ``method`` on ``ds`` with ``model_name`` at ``budget`` (a fraction of N·K
    parameters, or of the uniform-K dense bytes with ``budget_unit="bytes"``).
    ``time_budget``: the seconds of a time-matched method (``random_blocks@dnis_ft``).
    The cell holds ``method`` (the full name), ``config`` (the cell's MethodConfig) and
    ``value_dtype``. Raises NotApplicable for a dtype the method does not store."""
    base, overrides = parse_method(method)
    value_dtype = value_dtype_of(method)
    if not 0 < budget <= 1:
        raise ValueError(f"budget must be in (0, 1], got {budget}")
    ref = time_reference(method)
    if (ref is None) != (time_budget is None):
        raise ValueError(
            f"{method!r} needs time_budget (the wall time of its {ref} cell: compare reads it)"
            if ref
            else f"time_budget is for time-matched methods (random@m), not {method!r}"
        )
    found = METHODS[base]
    if value_dtype not in found.value_dtypes:
        raise NotApplicable(
            f"{base} stores {', '.join(found.value_dtypes)} values, not {value_dtype}"
        )
    cell_cfg = replace(cfg, **overrides) if overrides else cfg
    if found.configure is not None:
        cell_cfg = found.configure(cell_cfg)
    extra = {} if ref is None else {"time_budget": time_budget}
    if value_dtype != "fp32":
        extra["value_dtype"] = value_dtype
    cell = found.run(ds, model_name, cell_cfg, budget, seed, log, **extra)
    cell["method"] = method
    cell["config"] = asdict(cell_cfg)
    cell["value_dtype"] = value_dtype
    return cell
