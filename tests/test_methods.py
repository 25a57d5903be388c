"""DNIS and baselines at a budget: each respects it, reports bytes honestly, selects on valid."""

from __future__ import annotations

import json
import random
from dataclasses import asdict, replace
from types import SimpleNamespace

import pytest
import torch

from mixemb.data.schema import Dataset, FieldSpec, Split
from mixemb.nn import make_boundaries
from mixemb.search.methods import (
    METHODS,
    MethodConfig,
    mde_block_dims,
    random_block_dims,
    run_method,
)


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


def test_compare_is_resumable_and_writes_tables(tmp_path):
    from mixemb.search.compare import compare

    ds = _dataset(n=600)
    spec = {"name": "t", "task": "rating"}
    calls = []
    res = compare(
        ds,
        spec,
        "mf",
        CFG,
        methods=["uniform", "mde"],
        budgets=[0.5],
        seeds=[0, 1],
        out=tmp_path,
        log=calls.append,
    )
    assert len(res["cells"]) == 2 + 4  # uniform-K reference x2 seeds + 2 methods x 2 seeds
    table = (tmp_path / "results.md").read_text()
    assert "| mde | 0.5 |" in table and "± " in table
    again = compare(
        ds,
        spec,
        "mf",
        CFG,
        methods=["uniform", "mde"],
        budgets=[0.5],
        seeds=[0, 1],
        out=tmp_path,
        log=calls.append,
    )
    assert "6 already done" in calls[-1] or any("6 already done" in c for c in calls)
    assert again["cells"] == res["cells"]
    from mixemb.search.compare import markdown_table

    res["cells"]["random|0.01|0"] = {"method": "random", "budget": 0.01, "seed": 0, "skipped": "x"}
    assert "| random |" not in markdown_table(res, "rating")  # skipped cells stay out
    with pytest.raises(ValueError, match="different experiment"):
        compare(ds, spec, "fm", CFG, methods=["uniform"], budgets=[0.5], seeds=[0], out=tmp_path)


def test_compare_processes_sharing_an_output_folder_keep_each_others_cells(tmp_path, monkeypatch):
    """A second process (here: simulated inside the first cell) writes seed 1's cells to
    the same results.json; the first neither loses them nor runs them again."""
    import mixemb.search.compare as cmp

    ds = _dataset(n=600)
    spec = {"name": "t", "task": "rating"}
    header = {"dataset": spec, "model": "mf", "config": asdict(CFG)}
    real, ran = cmp.run_method, []

    def run_and_interleave(method, dataset, model, config, budget, seed):
        ran.append((method, budget, seed))
        if len(ran) == 1:  # "the other process" finishes seed 1 meanwhile
            other = {}
            for b in (1.0, 0.5):
                cell = real("uniform", dataset, model, config, b, 1)
                other[cmp.cell_key("uniform", b, 1)] = {**cell, "by": "other"}
            cmp.merge_results(tmp_path / "results.json", header, {"cells": other})
        return real(method, dataset, model, config, budget, seed)

    monkeypatch.setattr(cmp, "run_method", run_and_interleave)
    logs = []
    res = cmp.compare(
        ds, spec, "mf", CFG, methods=["uniform"], budgets=[0.5], seeds=[0, 1], out=tmp_path,
        log=logs.append,
    )  # fmt: skip
    assert ran == [("uniform", 1.0, 0), ("uniform", 0.5, 0)]
    assert sum("done elsewhere" in line for line in logs) == 2
    on_disk = json.loads((tmp_path / "results.json").read_text())["cells"]
    assert (
        set(on_disk)
        == set(res["cells"])
        == {cmp.cell_key("uniform", b, s) for b in (1.0, 0.5) for s in (0, 1)}
    )
    assert all(on_disk[cmp.cell_key("uniform", b, 1)]["by"] == "other" for b in (1.0, 0.5))


def test_compare_leaves_a_cell_another_live_process_is_running(tmp_path, monkeypatch):
    """A claim by a live process (here: pytest's parent) makes compare leave that cell to
    it; claims of exited processes and lapsed claims from other hosts are ignored; this
    process's own claims are released, also when a cell fails."""
    import os
    import socket
    import subprocess
    import sys
    import time

    import mixemb.search.compare as cmp

    ds = _dataset(n=600)
    spec = {"name": "t", "task": "rating"}
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()
    host, now = socket.gethostname(), time.time()
    live = {"pid": os.getppid(), "host": host, "since": now}
    claims = {
        cmp.cell_key("uniform", 0.5, 0): live,
        cmp.cell_key("uniform", 1.0, 0): {"pid": exited.pid, "host": host, "since": now},
        cmp.cell_key("uniform", 0.2, 0): {"pid": 1, "host": "elsewhere", "since": now - 25 * 3600},
    }
    claims_path = tmp_path / "results.json.claims"
    claims_path.write_text(json.dumps(claims))
    logs = []
    res = cmp.compare(
        ds, spec, "mf", CFG, methods=["uniform"], budgets=[0.5, 0.2], seeds=[0],
        out=tmp_path, log=logs.append,
    )  # fmt: skip
    assert set(res["cells"]) == {cmp.cell_key("uniform", b, 0) for b in (1.0, 0.2)}
    assert any(f"running in process {os.getppid()} on {host}, left to it" in x for x in logs)
    assert json.loads(claims_path.read_text()) == {cmp.cell_key("uniform", 0.5, 0): live}

    # a fresh claim from another host is honoured (its process cannot be checked)
    other = {"pid": 1, "host": "elsewhere", "since": time.time()}
    claims_path.write_text(json.dumps({cmp.cell_key("uniform", 0.5, 0): other}))
    header = {"dataset": spec, "model": "mf", "config": asdict(CFG)}
    assert cmp.claim_cell(tmp_path / "results.json", header, "uniform|0.5|0") == (None, other)

    def fail(*args, **kwargs):
        raise RuntimeError("boom")

    claims_path.unlink()
    monkeypatch.setattr(cmp, "run_method", fail)
    with pytest.raises(RuntimeError, match="boom"):
        cmp.compare(
            ds, spec, "mf", CFG, methods=["uniform"], budgets=[0.5], seeds=[0], out=tmp_path
        )
    assert json.loads(claims_path.read_text()) == {}


def test_aligned_prune_keeps_dnis_dims_at_nested_positions():
    from mixemb.prune import prune
    from mixemb.search.export import aligned_prune

    g = torch.Generator().manual_seed(0)
    merged = torch.randn(50, 16, generator=g) * torch.linspace(2, 0.1, 16)
    ref, report = prune(merged, keep=200)
    table, mask = aligned_prune(merged, keep=200)
    assert int(mask.sum()) == 200 and torch.equal(mask.sum(1), report.dims)
    assert torch.equal(table != 0, mask) and torch.equal(table[mask], merged[mask])
    # any two rows: the smaller kept set lies inside the larger (overlap = min of dims)
    shared = (mask.unsqueeze(1) & mask.unsqueeze(0)).sum(-1)
    dims = mask.sum(1)
    assert torch.equal(shared, torch.minimum(dims.unsqueeze(1), dims.unsqueeze(0)))


def test_floor_prune_leaves_no_feature_empty_and_spends_the_rest_by_magnitude():
    from mixemb.search.export import floor_prune

    g = torch.Generator().manual_seed(0)
    # rows fading in magnitude: plain magnitude pruning would empty the last ones
    merged = torch.randn(40, 8, generator=g) * torch.linspace(3, 0.01, 40).unsqueeze(1)
    merged[5] = 0  # an all-zero row stays empty (nothing to keep)
    table, mask = floor_prune(merged, keep=60)
    assert int(mask.sum()) == 60 and torch.equal(table != 0, mask)
    assert torch.equal(table[mask], merged[mask])
    nonzero = merged.ne(0).any(1)
    assert mask.any(1)[nonzero].all() and not mask[5].any()
    rows = torch.arange(40)
    assert mask[rows, merged.abs().argmax(1)][nonzero].all()  # each row's largest entry
    # beyond the forced entries, nothing left out is larger than what was chosen
    forced = torch.zeros_like(mask)
    forced[rows, merged.abs().argmax(1)] = True
    extra = mask & ~forced
    assert merged.abs()[extra].min() >= merged.abs()[~mask].max()
    with pytest.raises(ValueError, match="below one entry for each of the 39"):
        floor_prune(merged, keep=38)


def test_rotation_keeps_dot_products_and_is_only_offered_where_exact():
    from mixemb.search.export import rotate_table
    from mixemb.search.methods import NotApplicable

    e = torch.randn(30, 8, generator=torch.Generator().manual_seed(2))
    r = rotate_table(e)
    assert torch.allclose(r @ r.T, e @ e.T, atol=1e-5)
    energy = (r * r).sum(0)
    assert bool((energy[:-1] >= energy[1:] - 1e-5).all())  # leading columns carry most
    ds = _dataset(n=300)
    with pytest.raises(NotApplicable):
        run_method("dnis_rot", ds, "mlp", CFG, 0.5, 0)
    cell = run_method("magnitude_rot", ds, "mf", CFG, 0.5, 0)
    assert cell["kept_params"] == round(0.5 * ds.num_features * 8)


def test_byte_budgets_include_ragged_metadata():
    from mixemb.search.methods import InfeasibleBudget

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
    import mixemb.search.methods as methods

    calls = []
    real = methods.search

    def counting(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    methods.clear_cache()
    monkeypatch.setattr(methods, "search", counting)
    ds = _dataset(n=300)
    cells = [run_method(m, ds, "mf", CFG, b, 0) for m in ("dnis", "dnis_ft") for b in (0.5, 0.2)]
    assert len(calls) == 1
    assert len({c["search_seconds"] for c in cells}) == 1
    with pytest.raises(ValueError, match="mde@a"):
        run_method("mde@x", ds, "mf", CFG, 0.5, 0)


def test_full_warm_start_variant_searches_from_the_whole_training_schedule(monkeypatch):
    """dnis_warm(_ft) is dnis(_ft) with warmup_epochs = epochs: its own search (not the
    short-warm-start one shared by dnis / dnis_ft), recorded in the cell's config."""
    import mixemb.search.methods as methods

    warmups = []
    real = methods.search

    def recording(model, ds, scfg, **kw):
        warmups.append(scfg.warmup_epochs)
        return real(model, ds, scfg, **kw)

    methods.clear_cache()
    monkeypatch.setattr(methods, "search", recording)
    ds = _dataset(n=300)
    cfg = replace(CFG, epochs=3)
    short = run_method("dnis_ft", ds, "mf", cfg, 0.5, 0)
    warm = [run_method("dnis_warm_ft", ds, "mf", cfg, b, 0) for b in (0.5, 0.2)]
    assert warmups == [1, 3]  # one search each, the warm one reused across budgets
    assert short["config"]["warmup_epochs"] == 1
    assert [c["config"]["warmup_epochs"] for c in warm] == [3, 3]
    assert [c["method"] for c in warm] == ["dnis_warm_ft"] * 2
    assert warm[0]["kept_params"] <= 0.5 * ds.num_features * 8


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
    from mixemb.search.methods import MAX_TIMED_TRIALS, another_trial

    assert another_trial([], elapsed=99.0, trials=0, time_budget=0.0)  # the first always
    assert another_trial([1.0], 1.0, trials=2) and not another_trial([1.0, 1.0], 2.0, trials=2)
    # with a time budget the trial count is ignored: mean trial 2 s, 6 s used of 8 s
    assert another_trial([3.0, 1.0], 6.0, trials=1, time_budget=8.0)
    assert not another_trial([3.0, 1.0], 6.5, trials=100, time_budget=8.0)
    assert not another_trial([0.0] * MAX_TIMED_TRIALS, 0.0, trials=1, time_budget=1e9)


def test_time_matched_random_search_runs_for_its_time_budget(monkeypatch):
    import mixemb.search.methods as methods

    ds = _dataset(n=400)
    cell = run_method("random_blocks@dnis_ft", ds, "mf", CFG, 0.5, 0, time_budget=0.0)
    assert cell["trials"] == 1 and cell["time_budget_seconds"] == 0.0
    assert cell["method"] == "random_blocks@dnis_ft"
    monkeypatch.setattr(methods, "MAX_TIMED_TRIALS", 3)  # a long budget: more than random_trials
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
    from mixemb.search.methods import dnis_wall_seconds

    ds = _dataset(n=400)
    cell = run_method("dnis_ft", ds, "mf", CFG, 0.5, 0)
    assert 0 < cell["prune_seconds"] < cell["seconds"]
    assert dnis_wall_seconds(cell) == cell["search_seconds"] + cell["prune_seconds"]
    old = {"method": "dnis_ft", "seconds": 7.0, "search_seconds": 5.0}  # before prune_seconds
    assert dnis_wall_seconds(old) == 12.0
    with pytest.raises(ValueError, match="no search time"):
        dnis_wall_seconds({"method": "uniform", "seconds": 1.0})


def test_compare_gives_time_matched_random_its_dnis_cells_time(tmp_path, monkeypatch):
    import mixemb.search.compare as cmp
    from mixemb.search.methods import dnis_wall_seconds

    ds = _dataset(n=400)
    spec = {"name": "t", "task": "rating"}
    real, budgets_seen = cmp.run_method, {}

    def spy(method, dataset, model, config, budget, seed, **kw):
        budgets_seen[method, budget] = kw.get("time_budget")
        return real(method, dataset, model, config, budget, seed, **kw)

    monkeypatch.setattr(cmp, "run_method", spy)
    logs = []
    run = dict(budgets=[0.5], seeds=[0], out=tmp_path, log=logs.append)
    # listed alone, its DNIS cell has not run: left for later, not recorded
    res = cmp.compare(ds, spec, "mf", CFG, methods=["random_blocks@dnis_ft"], **run)
    assert any("left for later" in line for line in logs)
    assert cmp.cell_key("random_blocks@dnis_ft", 0.5, 0) not in res["cells"]
    # listed before dnis_ft, it still runs after it, for that cell's wall time
    res = cmp.compare(ds, spec, "mf", CFG, methods=["random_blocks@dnis_ft", "dnis_ft"], **run)
    dnis = res["cells"][cmp.cell_key("dnis_ft", 0.5, 0)]
    assert budgets_seen["random_blocks@dnis_ft", 0.5] == dnis_wall_seconds(dnis)
    matched = res["cells"][cmp.cell_key("random_blocks@dnis_ft", 0.5, 0)]
    assert matched["time_budget_seconds"] == dnis_wall_seconds(dnis) and matched["trials"] >= 1
    # where its DNIS cell is skipped (the budget cannot hold the ragged metadata), so is it
    cfg = replace(CFG, budget_unit="bytes")
    res = cmp.compare(
        ds, spec, "mf", cfg, methods=["dnis_ft", "random_blocks@dnis_ft"], budgets=[0.01],
        seeds=[0], out=tmp_path / "bytes", log=logs.append,
    )  # fmt: skip
    skipped = res["cells"][cmp.cell_key("random_blocks@dnis_ft", 0.01, 0)]["skipped"]
    assert "dnis_ft cell it matches was skipped" in skipped


def test_dnis_blocks_trains_dnis_block_dims_scaled_to_per_block_storage():
    """dnis_blocks: the block dims are DNIS's mean kept dims per block (from its element-
    wise pruning), scaled to fit the budget, stored as dense per-block tables."""
    from mixemb.search.methods import scaled_block_dims

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
    from mixemb.search.methods import scaled_block_dims

    assert scaled_block_dims([8.0, 4.0, 2.0, 0.0], [10] * 4, 64, budget_params=150) == [8, 4, 2, 1]
    assert scaled_block_dims([8.0, 4.0, 2.0, 0.0], [10] * 4, 64, budget_params=290) == [16, 8, 4, 1]
    dims = scaled_block_dims([100.0, 1.0], [1, 1], 8, budget_params=9)
    assert dims == [8, 1]  # clipped at dim
