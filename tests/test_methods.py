"""DNIS and baselines at a budget: each respects it, reports bytes honestly, selects on valid."""

from __future__ import annotations

import random
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

import mixemb.methods.random as random_family
import mixemb.methods.shared as shared
import mixemb.methods.uniform as uniform_family
from mixemb.data.schema import Dataset, FieldSpec, Split
from mixemb.methods import (
    METHODS,
    InfeasibleBudget,
    MethodConfig,
    NotApplicable,
    clear_cache,
    dnis_wall_seconds,
    run_method,
)
from mixemb.methods.blocks import scaled_block_dims
from mixemb.methods.mde import mde_block_dims
from mixemb.methods.random import MAX_TIMED_TRIALS, another_trial, random_block_dims
from mixemb.nn import make_boundaries
from mixemb.prune.finetune import stored_model
from mixemb.train import evaluate


def _dataset(n=1500, users=50, items=30):
    g = torch.Generator().manual_seed(1)
    # frequency-sorted ids: low ids are drawn more often
    u = (torch.rand(n, generator=g) ** 2 * users).long()
    i = (torch.rand(n, generator=g) ** 2 * items).long()
    pu, qi = torch.randn(users, 2, generator=g), torch.randn(items, 2, generator=g)
    y = 3 + (pu[u] * qi[i]).sum(1) + 0.2 * torch.randn(n, generator=g)
    ids = torch.stack([u, users + i], 1).int()
    freq = torch.bincount(ids[: int(0.7 * n)].reshape(-1).long(), minlength=users + items)
    enc = SimpleNamespace(
        num_features=users + items,
        fields=[FieldSpec("u"), FieldSpec("i")],
        frequencies=freq.numpy(),
        id_order="frequency",
    )
    a, b = int(0.7 * n), int(0.9 * n)
    return Dataset(
        "t", "rating", enc, *[Split(ids[s], y[s]) for s in (slice(0, a), slice(a, b), slice(b, n))]
    )


CFG = MethodConfig(
    dim=8,
    num_blocks=4,
    epochs=2,
    search_epochs=1,
    warmup_epochs=1,
    random_trials=2,
    batch_size=256,
    lr=1e-2,
)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_respects_the_budget(method):
    ds = _dataset()
    cell = run_method(method, ds, "mf", CFG, 0.5, seed=0)
    assert cell["kept_params"] <= 0.5 * ds.num_features * 8 + 1e-9
    assert cell["stored_bytes"] > 0 and cell["seconds"] > 0
    assert set(cell["test"]) == {"mse", "rmse"} and cell["method"] == method


def test_pruning_methods_keep_exactly_the_budget_with_and_without_finetuning():
    ds = _dataset()
    cfg = MethodConfig(**{**CFG.__dict__, "finetune_epochs": 1})
    for method in ("dnis", "dnis_ft", "magnitude", "magnitude_ft"):
        cell = run_method(method, ds, "fm", cfg, 0.25, seed=0)
        assert cell["kept_params"] == round(0.25 * ds.num_features * 8)
        assert cell["method"] == method


def test_mde_dims_match_budget_and_follow_frequency():
    sizes = [10, 10, 10, 10]
    dims = mde_block_dims([1000, 100, 10, 1], sizes, 64, budget_params=800, exponent=0.5)
    assert dims == sorted(dims, reverse=True) and dims[0] > dims[-1]
    assert sum(s * d for s, d in zip(sizes, dims)) <= 800
    flat = mde_block_dims([1000, 100, 10, 1], sizes, 64, budget_params=800, exponent=0.0)
    assert flat == [20, 20, 20, 20]  # a = 0 is the uniform dimension


def test_random_dims_are_non_increasing_and_within_budget():
    rng = random.Random(0)
    for _ in range(20):
        dims = random_block_dims(rng, [5, 5, 5], 16, 150, min_dim=4)
        assert dims == sorted(dims, reverse=True)
        assert min(dims) >= 4 and sum(5 * d for d in dims) <= 150
    assert random_block_dims(rng, [5, 5], 16, 10, min_dim=4) is None
    # a tight budget (20% of K=64 over 10 blocks) still gets random shapes that fit
    sizes = [100] * 10
    shapes = {tuple(random_block_dims(rng, sizes, 64, 12_800, 4)) for _ in range(10)}
    assert len(shapes) > 1
    for dims in shapes:
        assert sum(100 * d for d in dims) <= 12_800 and min(dims) >= 4
        assert list(dims) == sorted(dims, reverse=True)


def test_bad_method_and_budget():
    ds = _dataset(n=300)
    with pytest.raises(ValueError, match="unknown method"):
        run_method("oracle", ds, "mf", CFG, 0.5, 0)
    with pytest.raises(ValueError, match="budget"):
        run_method("dnis", ds, "mf", CFG, 1.5, 0)


def test_rotation_is_only_offered_where_exact():
    ds = _dataset(n=300)
    with pytest.raises(NotApplicable):
        run_method("dnis_rot", ds, "mlp", CFG, 0.5, 0)
    cell = run_method("magnitude_rot", ds, "mf", CFG, 0.5, 0)
    assert cell["kept_params"] == round(0.5 * ds.num_features * 8)


def test_byte_budgets_include_ragged_metadata():
    ds = _dataset(n=400)
    cfg = MethodConfig(**{**CFG.__dict__, "budget_unit": "bytes"})
    dense = 4 * ds.num_features * 8
    for method in ("uniform", "dnis", "mde@0.5", "random"):
        cell = run_method(method, ds, "mf", cfg, 0.5, 0)
        assert cell["stored_bytes"] <= 0.5 * dense, method
    assert run_method("mde@0.5", ds, "mf", cfg, 0.5, 0)["config"]["mde_exponent"] == 0.5
    with pytest.raises(InfeasibleBudget):  # the masks alone need more than 5% here
        run_method("dnis", ds, "mf", cfg, 0.05, 0)
    with pytest.raises(ValueError, match="budget_unit"):
        MethodConfig(budget_unit="rows")


def test_search_runs_once_per_seed_across_budgets_and_variants(monkeypatch):
    calls = []
    real = shared.search

    def counting(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    clear_cache()
    monkeypatch.setattr(shared, "search", counting)
    ds = _dataset(n=300)
    cells = [run_method(m, ds, "mf", CFG, b, 0) for m in ("dnis", "dnis_ft") for b in (0.5, 0.2)]
    assert len(calls) == 1
    assert len({c["search_seconds"] for c in cells}) == 1
    with pytest.raises(ValueError, match="mde@a"):
        run_method("mde@x", ds, "mf", CFG, 0.5, 0)


def test_full_warm_start_variant_searches_from_the_whole_training_schedule(monkeypatch):
    """dnis_warm(_ft) is dnis(_ft) with warmup_epochs = epochs: its own search (not the
    short-warm-start one shared by dnis / dnis_ft), recorded in the cell's config."""
    warmups = []
    real = shared.search

    def recording(model, ds, scfg, **kw):
        warmups.append(scfg.warmup_epochs)
        return real(model, ds, scfg, **kw)

    clear_cache()
    monkeypatch.setattr(shared, "search", recording)
    ds = _dataset(n=300)
    cfg = replace(CFG, epochs=3)
    short = run_method("dnis_ft", ds, "mf", cfg, 0.5, 0)
    warm = [run_method("dnis_warm_ft", ds, "mf", cfg, b, 0) for b in (0.5, 0.2)]
    assert warmups == [1, 3]  # one search each, the warm one reused across budgets
    assert short["config"]["warmup_epochs"] == 1
    assert [c["config"]["warmup_epochs"] for c in warm] == [3, 3]
    assert [c["method"] for c in warm] == ["dnis_warm_ft"] * 2
    assert warm[0]["kept_params"] <= 0.5 * ds.num_features * 8
    # the block-mask variant on the full warm start shares that search
    block = run_method("dnis_warm_blockmask_rot_ft", ds, "mf", cfg, 0.5, 0)
    assert warmups == [1, 3]
    assert block["config"]["warmup_epochs"] == 3
    assert block["search_seconds"] == warm[0]["search_seconds"]


def test_block_table_variants_store_block_dims_without_ragged_masks():
    """mde_blocks / random_blocks: the same block dims as mde / random, counted as one
    dense table per block, so at a byte budget they afford more dims than ragged storage."""
    ds = _dataset(n=400)
    cfg = MethodConfig(**{**CFG.__dict__, "budget_unit": "bytes"})
    dense = 4 * ds.num_features * cfg.dim
    for ragged, blocks in (("mde@0.5", "mde_blocks@0.5"), ("random", "random_blocks")):
        r = run_method(ragged, ds, "mf", cfg, 0.5, 0)
        b = run_method(blocks, ds, "mf", cfg, 0.5, 0)
        assert b["method"] == blocks
        assert b["stored_bytes"] <= 0.5 * dense
        assert b["kept_params"] > r["kept_params"], (ragged, r["kept_params"], b["kept_params"])
        bounds = make_boundaries(ds.num_features, num_blocks=cfg.num_blocks)
        sizes = (bounds[1:] - bounds[:-1]).tolist()
        kept = sum(s * d for s, d in zip(sizes, b["block_dims"]))
        assert b["kept_params"] == kept
        assert b["stored_bytes"] == 4 * kept + 8 * (cfg.num_blocks + 1)
    assert run_method("mde_blocks@0.5", ds, "mf", cfg, 0.5, 0)["config"]["mde_exponent"] == 0.5


def test_another_trial_runs_a_fixed_count_or_what_fits_the_time():
    assert another_trial([], elapsed=99.0, trials=0, time_budget=0.0)  # the first always
    assert another_trial([1.0], 1.0, trials=2) and not another_trial([1.0, 1.0], 2.0, trials=2)
    # with a time budget the trial count is ignored: mean trial 2 s, 6 s used of 8 s
    assert another_trial([3.0, 1.0], 6.0, trials=1, time_budget=8.0)
    assert not another_trial([3.0, 1.0], 6.5, trials=100, time_budget=8.0)
    assert not another_trial([0.0] * MAX_TIMED_TRIALS, 0.0, trials=1, time_budget=1e9)


def test_time_matched_random_search_runs_for_its_time_budget(monkeypatch):
    ds = _dataset(n=400)
    cell = run_method("random_blocks@dnis_ft", ds, "mf", CFG, 0.5, 0, time_budget=0.0)
    assert cell["trials"] == 1 and cell["time_budget_seconds"] == 0.0
    assert cell["method"] == "random_blocks@dnis_ft"
    # a long budget: more trials than random_trials
    monkeypatch.setattr(random_family, "MAX_TIMED_TRIALS", 3)
    assert run_method("random@dnis", ds, "mf", CFG, 0.5, 0, time_budget=1e9)["trials"] == 3
    assert run_method("random", ds, "mf", CFG, 0.5, 0)["trials"] == CFG.random_trials
    with pytest.raises(ValueError, match="needs time_budget"):
        run_method("random_blocks@dnis_ft", ds, "mf", CFG, 0.5, 0)
    with pytest.raises(ValueError, match="time-matched"):
        run_method("random", ds, "mf", CFG, 0.5, 0, time_budget=1.0)
    for bad in ("random@uniform", "random_blocks@magnitude_ft", "random@nope", "uniform@dnis"):
        with pytest.raises(ValueError):
            run_method(bad, ds, "mf", CFG, 0.5, 0, time_budget=1.0)


def test_dnis_wall_seconds_is_the_search_plus_the_budgets_own_time():
    ds = _dataset(n=400)
    cell = run_method("dnis_ft", ds, "mf", CFG, 0.5, 0)
    assert 0 < cell["prune_seconds"] < cell["seconds"]
    assert dnis_wall_seconds(cell) == cell["search_seconds"] + cell["prune_seconds"]
    old = {"method": "dnis_ft", "seconds": 7.0, "search_seconds": 5.0}  # before prune_seconds
    assert dnis_wall_seconds(old) == 12.0
    with pytest.raises(ValueError, match="no search time"):
        dnis_wall_seconds({"method": "uniform", "seconds": 1.0})


def test_dnis_blocks_trains_dnis_block_dims_scaled_to_per_block_storage():
    """dnis_blocks: the block dims are DNIS's mean kept dims per block (from its element-
    wise pruning), scaled to fit the budget, stored as dense per-block tables."""
    ds = _dataset(n=400)
    cfg = replace(CFG, budget_unit="bytes")
    cell = run_method("dnis_blocks", ds, "mf", cfg, 0.3, 0)
    bounds = make_boundaries(ds.num_features, num_blocks=cfg.num_blocks)
    sizes = (bounds[1:] - bounds[:-1]).tolist()
    budget = (int(0.3 * 4 * ds.num_features * cfg.dim) - 8 * (cfg.num_blocks + 1)) // 4
    assert cell["block_dims"] == scaled_block_dims(cell["block_mean_dims"], sizes, cfg.dim, budget)
    assert cell["kept_params"] == sum(s * d for s, d in zip(sizes, cell["block_dims"])) <= budget
    assert cell["stored_bytes"] == 4 * cell["kept_params"] + 8 * (cfg.num_blocks + 1)
    # the means are those of DNIS's own pruning at that many entries
    dnis = run_method(
        "dnis",
        ds,
        "mf",
        replace(cfg, budget_unit="params"),
        budget / (ds.num_features * cfg.dim),
        0,
    )
    assert dnis["block_mean_dims"] == pytest.approx(cell["block_mean_dims"])
    assert cell["search_seconds"] > 0 and 0 < cell["prune_seconds"] < cell["seconds"]


def test_scaled_block_dims_fill_the_budget_in_proportion():
    assert scaled_block_dims([8.0, 4.0, 2.0, 0.0], [10] * 4, 64, budget_params=150) == [8, 4, 2, 1]
    assert scaled_block_dims([8.0, 4.0, 2.0, 0.0], [10] * 4, 64, budget_params=290) == [16, 8, 4, 1]
    dims = scaled_block_dims([100.0, 1.0], [1, 1], 8, budget_params=9)
    assert dims == [8, 1]  # clipped at dim


@pytest.mark.parametrize("method", METHODS)
def test_every_method_stores_its_value_dtypes_at_their_bytes(method):
    """A lower precision buys more values within the same stored bytes; a dtype a
    method's format does not hold is NotApplicable."""
    ds = _dataset(n=300)
    cfg = replace(CFG, budget_unit="bytes")
    found = METHODS[method]
    name = f"{method}@dnis_ft" if found.time_matched else method
    kw = {"time_budget": 0.0} if found.time_matched else {}
    low = "int8" if "int8" in found.value_dtypes else "fp16"
    if low != "int8":
        with pytest.raises(NotApplicable, match="not int8"):
            run_method(f"{name}:int8", ds, "mf", cfg, 0.5, 0, **kw)
    fp32 = run_method(name, ds, "mf", cfg, 0.5, 0, **kw)
    cell = run_method(f"{name}:{low}", ds, "mf", cfg, 0.5, 0, **kw)
    assert cell["method"] == f"{name}:{low}" and cell["value_dtype"] == low
    assert fp32["value_dtype"] == "fp32" and fp32["config"] == cell["config"]
    assert cell["stored_bytes"] <= 0.5 * 4 * ds.num_features * cfg.dim
    assert cell["kept_params"] > fp32["kept_params"]


def record_models(monkeypatch, module) -> list:
    """The models that ``module``'s runners report (before their values are rounded)."""
    models = []
    real = module.make_cell

    def recording(method, ds, model, *args, **kw):
        models.append(model)
        return real(method, ds, model, *args, **kw)

    monkeypatch.setattr(module, "make_cell", recording)
    return models


def test_a_value_dtype_evaluates_the_fp32_model_with_its_stored_values_rounded(monkeypatch):
    models = record_models(monkeypatch, uniform_family)
    ds = _dataset(n=400)
    fp32 = run_method("uniform", ds, "mf", CFG, 0.5, 0)  # params: the same d at any dtype
    bf16 = run_method("uniform:bf16", ds, "mf", CFG, 0.5, 0)
    assert fp32["dim"] == bf16["dim"] and bf16["stored_bytes"] == fp32["stored_bytes"] // 2
    assert torch.equal(models[0].embedding.weight, models[1].embedding.weight)  # fp32 training
    assert fp32["valid"] == evaluate(models[0], ds.valid, ds.task)
    assert bf16["valid"] == evaluate(stored_model(models[1], "bf16"), ds.valid, ds.task)
    assert bf16["valid"] != fp32["valid"]
    # the cached model itself is never rounded
    assert torch.equal(models[1].embedding.weight, models[0].embedding.weight)
