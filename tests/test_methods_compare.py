"""The method registry and ``compare``: names parsed in one place, resumable cells, a
method added with one ``register`` line, a results store that other runners plug in."""

from __future__ import annotations

import json
import time

import pytest
import torch
from test_methods import CFG  # the tiny settings every method test trains with

import mixemb.methods.comparison as comparison
from mixemb.data import load_dataset
from mixemb.methods import (
    METHODS,
    Method,
    MethodConfig,
    ResultsStore,
    cell_key,
    compare,
    dnis_wall_seconds,
    markdown_table,
    parse_method,
    plan_cells,
    register,
    run_method,
    time_reference,
    unregister,
    value_dtype_of,
)
from mixemb.methods.base import split_value_dtype
from mixemb.methods.cells import make_cell
from mixemb.models import build_model
from mixemb.prune import uniform_dim

SPEC = {"name": "synthetic", "task": "rating"}


@pytest.fixture(scope="module")
def ds():
    return load_dataset("synthetic", "rating", num_rows=600, num_users=40, num_items=30)


def test_names_and_arguments_are_parsed_in_one_place():
    assert parse_method("mde@0.5") == ("mde", {"mde_exponent": 0.5})
    assert parse_method("mde_blocks@0") == ("mde_blocks", {"mde_exponent": 0.0})
    assert parse_method("random_blocks@dnis_ft") == ("random_blocks", {})
    assert time_reference("random_blocks@dnis_ft") == "dnis_ft"
    assert time_reference("dnis_ft") is None and time_reference("mde@0.5") is None
    for bad, match in (
        ("oracle", "unknown method"),
        ("mde@x", "mde@a needs a number"),
        ("uniform@dnis", "take a parameter"),
        ("random@uniform", "wall time"),
        ("random_blocks@magnitude_ft", "wall time"),
        ("random@nope", "wall time"),
    ):
        with pytest.raises(ValueError, match=match):
            parse_method(bad)
    with pytest.raises(ValueError, match="already registered"):
        register(METHODS["dnis"])
    with pytest.raises(ValueError, match="'@'"):
        Method("a@b", run_method)


def test_a_value_dtype_suffix_ends_any_name_and_no_suffix_is_fp32():
    assert split_value_dtype("mde_blocks@0.3:int8") == ("mde_blocks@0.3", "int8")
    assert split_value_dtype("dnis_ft") == ("dnis_ft", "fp32")
    assert parse_method("mde@0.5:bf16") == ("mde", {"mde_exponent": 0.5})
    assert parse_method("uniform:fp16") == parse_method("uniform") == ("uniform", {})
    assert [value_dtype_of(m) for m in ("uniform", "uniform:fp16", "dnis_blockmask_ft:int8")] == [
        "fp32",
        "fp16",
        "int8",
    ]
    # a time-matched method matches m at its own dtype
    assert time_reference("random_blocks@dnis_ft:fp16") == "dnis_ft:fp16"
    for bad in ("uniform:fp32", "uniform:int4", "uniform:", "oracle:fp16", "mde@x:fp16"):
        with pytest.raises(ValueError):
            parse_method(bad)
    with pytest.raises(ValueError, match="':'"):
        Method("a:b", run_method)
    with pytest.raises(ValueError, match="value_dtypes"):
        Method("a", run_method, value_dtypes=("fp16",))
    plan = plan_cells(["uniform:fp16", "random@dnis:fp16", "dnis:fp16"], [0.5], [0])
    assert plan == [
        ("uniform", 1.0, 0),
        ("uniform:fp16", 0.5, 0),
        ("dnis:fp16", 0.5, 0),
        ("random@dnis:fp16", 0.5, 0),
    ]


def test_plan_runs_the_reference_first_then_seed_by_seed_time_matched_last():
    plan = plan_cells(["random@dnis", "uniform", "dnis"], [1.0, 0.5], [0, 1])
    assert plan[:2] == [("uniform", 1.0, 0), ("uniform", 1.0, 1)]
    seed0 = [c for c in plan[2:] if c[2] == 0]
    assert seed0 == [
        ("dnis", 1.0, 0),
        ("random@dnis", 1.0, 0),
        ("uniform", 0.5, 0),
        ("dnis", 0.5, 0),
        ("random@dnis", 0.5, 0),
    ]
    assert plan[-1][2] == 1 and cell_key("mde@0.5", 0.05, 2) == "mde@0.5|0.05|2"


def run_toy(ds, model_name, cfg, budget, seed, log):
    """An untrained uniform model of dimension floor(budget·K): the smallest method."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    d = uniform_dim(budget, cfg.dim)
    model = build_model(model_name, ds.num_features, ds.num_fields, d, **cfg.model_kwargs)
    n = ds.num_features * d
    return make_cell("toy", ds, model, cfg, budget, seed, t0, n, 4 * n, trials=cfg.random_trials)


@pytest.fixture
def toy():
    register(Method("toy", run_toy, parse=lambda a: {"random_trials": int(a)}, argument="n"))
    yield
    unregister("toy")


def test_a_registered_method_runs_through_compare(toy, ds, tmp_path):
    logs = []
    res = compare(
        ds, SPEC, "mf", CFG, methods=["toy", "toy@3"], budgets=[0.5], seeds=[0],
        out=tmp_path, log=logs.append,
    )  # fmt: skip
    toy_cell = res["cells"][cell_key("toy", 0.5, 0)]
    arg_cell = res["cells"][cell_key("toy@3", 0.5, 0)]
    assert toy_cell["method"] == "toy" and toy_cell["kept_params"] == ds.num_features * 4
    assert arg_cell["trials"] == 3 and arg_cell["config"]["random_trials"] == 3
    assert toy_cell["config"]["random_trials"] == CFG.random_trials
    assert "| toy@3 | 0.5 |" in (tmp_path / "results.md").read_text()
    assert set(json.loads((tmp_path / "results.json").read_text())["cells"]) == set(res["cells"])


def test_an_unregistered_method_is_unknown_again(ds, tmp_path):
    assert "toy" not in METHODS
    with pytest.raises(ValueError, match="unknown methods"):
        compare(ds, SPEC, "mf", CFG, methods=["toy"], budgets=[0.5], seeds=[0], out=tmp_path)


def test_compare_is_resumable_and_writes_tables(ds, tmp_path):
    calls = []
    run = dict(methods=["uniform", "mde"], budgets=[0.5], seeds=[0, 1], out=tmp_path)
    res = compare(ds, SPEC, "mf", CFG, log=calls.append, **run)
    assert len(res["cells"]) == 2 + 4  # uniform-K reference x2 seeds + 2 methods x 2 seeds
    table = (tmp_path / "results.md").read_text()
    assert "| mde | 0.5 |" in table and "± " in table
    again = compare(ds, SPEC, "mf", CFG, log=calls.append, **run)
    assert any("6 already done" in c for c in calls)
    assert again["cells"] == res["cells"]
    res["cells"]["random|0.01|0"] = {"method": "random", "budget": 0.01, "seed": 0, "skipped": "x"}
    assert "| random |" not in markdown_table(res, "rating")  # skipped cells stay out
    with pytest.raises(ValueError, match="different experiment"):
        compare(ds, SPEC, "fm", CFG, methods=["uniform"], budgets=[0.5], seeds=[0], out=tmp_path)


class SharedStore(ResultsStore):
    """A store as a runner sharing its output with others would write it: here another
    process has finished one cell and is running another (whose cell sync picks up)."""

    def __init__(self, path, header, finished, running):
        super().__init__(path, header)
        self.finished, self.running, self.released = finished, running, []

    def take(self, key):
        if key in self.finished:
            return self.finished[key], None
        return (None, "running elsewhere") if key == self.running else (None, None)

    def release(self, key):
        self.released.append(key)

    def sync(self, results):
        results["cells"][self.running] = {"method": "uniform", "budget": 0.5, "skipped": "other"}
        return self.record(results)


def test_a_store_decides_which_cells_run(ds, tmp_path, monkeypatch):
    ran = []
    real = comparison.run_method

    def spy(method, dataset, model, config, budget, seed, **kw):
        ran.append(cell_key(method, budget, seed))
        return real(method, dataset, model, config, budget, seed, **kw)

    monkeypatch.setattr(comparison, "run_method", spy)
    done, busy = cell_key("uniform", 1.0, 0), cell_key("uniform", 0.5, 0)
    stores = []

    def store(path, header):
        finished = {done: {"method": "uniform", "budget": 1.0, "skipped": "other"}}
        stores.append(SharedStore(path, header, finished, busy))
        return stores[-1]

    logs = []
    res = compare(
        ds, SPEC, "mf", CFG, methods=["uniform"], budgets=[0.5, 0.2], seeds=[0],
        out=tmp_path, log=logs.append, store=store,
    )  # fmt: skip
    assert ran == [cell_key("uniform", 0.2, 0)]
    assert stores[0].released == ran
    assert any("done elsewhere" in x for x in logs)
    assert any("running elsewhere, left to it" in x for x in logs)
    on_disk = json.loads((tmp_path / "results.json").read_text())["cells"]
    assert on_disk == res["cells"] and on_disk[busy]["skipped"] == "other"


def test_compare_gives_time_matched_random_its_dnis_cells_time(ds, tmp_path, monkeypatch):
    real, budgets_seen = comparison.run_method, {}

    def spy(method, dataset, model, config, budget, seed, **kw):
        budgets_seen[method, budget] = kw.get("time_budget")
        return real(method, dataset, model, config, budget, seed, **kw)

    monkeypatch.setattr(comparison, "run_method", spy)
    logs = []
    run = dict(budgets=[0.5], seeds=[0], out=tmp_path, log=logs.append)
    # listed alone, its DNIS cell has not run: left for later, not recorded
    res = compare(ds, SPEC, "mf", CFG, methods=["random_blocks@dnis_ft"], **run)
    assert any("left for later" in line for line in logs)
    assert cell_key("random_blocks@dnis_ft", 0.5, 0) not in res["cells"]
    # listed before dnis_ft, it still runs after it, for that cell's wall time
    res = compare(ds, SPEC, "mf", CFG, methods=["random_blocks@dnis_ft", "dnis_ft"], **run)
    dnis = res["cells"][cell_key("dnis_ft", 0.5, 0)]
    assert budgets_seen["random_blocks@dnis_ft", 0.5] == dnis_wall_seconds(dnis)
    matched = res["cells"][cell_key("random_blocks@dnis_ft", 0.5, 0)]
    assert matched["time_budget_seconds"] == dnis_wall_seconds(dnis) and matched["trials"] >= 1
    # where its DNIS cell is skipped (the budget cannot hold the ragged metadata), so is it
    cfg = MethodConfig(**{**CFG.__dict__, "budget_unit": "bytes"})
    res = compare(
        ds, SPEC, "mf", cfg, methods=["dnis_ft", "random_blocks@dnis_ft"], budgets=[0.01],
        seeds=[0], out=tmp_path / "bytes", log=logs.append,
    )  # fmt: skip
    skipped = res["cells"][cell_key("random_blocks@dnis_ft", 0.01, 0)]["skipped"]
    assert "dnis_ft cell it matches was skipped" in skipped
