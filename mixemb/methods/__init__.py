"""DNIS and its baselines at a budget, each returning one result cell; ``compare``.

A budget is a fraction of the uniform-K table's N·K parameters
(``MethodConfig.budget_unit="params"``, the default) or of its dense fp32 bytes 4·N·K
(``"bytes"``), which ragged tables must meet *including* their metadata, so equal
budgets are equal stored bytes (:mod:`mixemb.prune.budget`). Every method goes through
the same data, model and trainer, and reports its validation and test metrics, the
parameters it keeps, the bytes it stores and its wall time. Selection uses validation
only.

The methods, one family per module (each module's docstring describes its methods):

* :mod:`~mixemb.methods.uniform`: ``uniform``, one dimension for every feature;
* :mod:`~mixemb.methods.dnis`: ``dnis``, ``dnis_ft``, ``dnis_aligned(_ft)``,
  ``dnis_floor(_ft)``, ``dnis_rot(_ft)``, ``dnis_warm(_ft)``, ``dnis_blocks``;
* :mod:`~mixemb.methods.magnitude`: ``magnitude(_ft)``, ``magnitude_rot(_ft)``;
* :mod:`~mixemb.methods.mde`: ``mde``, ``mde_blocks``, with ``@a`` the exponent;
* :mod:`~mixemb.methods.random`: ``random``, ``random_blocks``, with ``@m`` the method
  whose wall time they match (``random_blocks@dnis_ft``);
* :mod:`~mixemb.methods.blockmask`: ``dnis_blockmask(_rot)(_ft)``, DNIS choosing one set
  of dimensions per frequency block, stored as dense per-block tables, and the same layout
  without the search (``magnitude_blockmask(_rot)_ft``, ``svd_ft``).

Any of them may end in a value dtype, ``:fp16``, ``:bf16`` or ``:int8`` (``uniform:fp16``,
``mde_blocks@0.3:int8``): the table stores those values (:mod:`mixemb.quant`) and a byte
budget buys that many more of them; no suffix is fp32.

Adding a method: a module defining ``METHODS = (Method(name, runner), ...)`` (see
:class:`Method` and :mod:`~mixemb.methods.uniform`, the smallest), its name in
``FAMILIES`` below, and its test; or, outside the package, ``register(Method(...))``.
"""

import importlib

from mixemb.methods.base import (
    METHODS,
    Method,
    NotApplicable,
    dnis_wall_seconds,
    parse_method,
    register,
    run_method,
    time_reference,
    unregister,
    valid_names,
    value_dtype_of,
)
from mixemb.methods.comparison import (
    ResultsStore,
    cell_key,
    compare,
    load_results,
    markdown_table,
    plan_cells,
    plot_results,
    summarize,
)
from mixemb.methods.config import MethodConfig
from mixemb.methods.shared import clear_cache
from mixemb.prune import InfeasibleBudget

# The registry of built-in families, in the order compare lists their methods: one module
# of mixemb/methods/ each. Imported by name so that the order is this line's, not an
# import sorter's.
FAMILIES = ("uniform", "dnis", "magnitude", "mde", "random", "blockmask")
for _family in FAMILIES:
    register(*importlib.import_module(f"mixemb.methods.{_family}").METHODS)

__all__ = [
    "FAMILIES",
    "METHODS",
    "InfeasibleBudget",
    "Method",
    "MethodConfig",
    "NotApplicable",
    "ResultsStore",
    "cell_key",
    "clear_cache",
    "compare",
    "dnis_wall_seconds",
    "load_results",
    "markdown_table",
    "parse_method",
    "plan_cells",
    "plot_results",
    "register",
    "run_method",
    "summarize",
    "time_reference",
    "unregister",
    "valid_names",
    "value_dtype_of",
]
