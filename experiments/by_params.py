"""The cells of an experiment that are cells of a parameter budget (the paper's unit).

A cell run at parameter budget b (its config's ``budget_unit = "params"``) keeps at most
b of uniform-K's N·K parameters. A cell with fp32 values run at byte budget b stores at
most b·4·N·K bytes, so it keeps at most b·N·K parameters: it is a cell of parameter
budget b as well, checked against its ``kept_params``. Ragged tables among them keep
fewer, their metadata being paid out of the same bytes. A cell with fp16, bf16 or int8
values at byte budget b holds more than b·N·K parameters, and a parameter budget does
not price precision, so it is not one.
"""

from __future__ import annotations

from mixemb.methods import value_dtype_of
from mixemb.prune import uniform_dim


def cell_unit(cell: dict, results: dict) -> str:
    """The budget unit ``cell`` ran at: its own config's, else its experiment's ("params"
    where neither says, MethodConfig's default)."""
    unit = cell.get("config", {}).get("budget_unit")
    return unit or results.get("config", {}).get("budget_unit", "params")


def cell_value_dtype(cell: dict) -> str:
    """The value dtype ``cell`` stores ("fp32" where neither the cell nor its method's
    suffix names one)."""
    return cell.get("value_dtype") or value_dtype_of(cell["method"])


def table_params(results: dict) -> int | None:
    """N·K, the parameters of the experiment's uniform-K table, from its fp32 ``uniform``
    cells: kept_params·K/d, d being the dimension ``uniform`` keeps at that budget (K at
    budget 1, whose cell is preferred); None without such a cell."""
    dim = results.get("config", {}).get("dim")
    found = []
    for c in results["cells"].values():
        if "skipped" in c or c["method"] != "uniform" or cell_value_dtype(c) != "fp32":
            continue
        k = c.get("config", {}).get("dim", dim)
        if k is None:
            continue
        d = uniform_dim(float(c["budget"]), k, unit=cell_unit(c, results))
        if c["kept_params"] % d == 0:
            found.append((float(c["budget"]), c["kept_params"] // d * k))
    return max(found)[1] if found else None


def params_results(results: dict) -> tuple[dict, int | None, int]:
    """(results holding only its cells of a parameter budget, N·K, the number of fp32
    cells at a byte budget that were left out for keeping more than budget·N·K
    parameters). Without N·K, only the cells run at a parameter budget are kept. A cell
    run at a parameter budget takes the place of one of the same method, budget and seed
    run at a byte budget."""
    size = table_params(results)
    chosen: dict[tuple[str, float, int], tuple[str, dict]] = {}
    over = 0
    for key, c in results["cells"].items():
        if "skipped" in c:
            continue
        at = (c["method"], float(c["budget"]), c["seed"])
        if cell_unit(c, results) == "params":
            chosen[at] = (key, c)
            continue
        if cell_value_dtype(c) != "fp32" or size is None:
            continue
        if c["kept_params"] > round(float(c["budget"]) * size):
            over += 1
        elif at not in chosen:
            chosen[at] = (key, c)
    cells = dict(chosen.values())
    return {**results, "cells": cells}, size, over
