"""The block-mask methods: one dimension set per frequency block (from α, or from the
uniform-K table), kept on Ê (rotated or not), stored as dense per-block tables within the
byte budget at every value dtype; svd_ft, the dense truncated-SVD baseline."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from test_methods import CFG, _dataset, record_models

import mixemb.methods.blockmask as family
from mixemb.methods import NotApplicable, run_method
from mixemb.methods.blocks import block_sizes
from mixemb.methods.cells import keep_entries
from mixemb.methods.shared import searched, uniform_k
from mixemb.nn import make_boundaries
from mixemb.prune import merged_table, rotate_table, uniform_dim
from mixemb.prune.budget import block_tables_bytes, dense_bytes
from mixemb.prune.finetune import masked_model, stored_model
from mixemb.prune.pruners import block_mask_prune, expand_block_mask
from mixemb.train import evaluate

BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}


@pytest.fixture
def served(monkeypatch):
    return record_models(monkeypatch, family)


def stored(model) -> tuple[torch.Tensor, torch.Tensor]:
    """(values (N, K) as served, mask (N, K) bool) of a model on a BlockTableEmbedding."""
    table = model.embedding.table
    return table.to_dense(), expand_block_mask(table.block_mask(), table.boundaries)


@pytest.mark.parametrize("value_dtype", ["fp32", "fp16", "int8"])
def test_the_byte_budget_is_spent_exactly_and_every_block_keeps_a_dimension(value_dtype):
    ds = _dataset(n=400)
    cfg = replace(CFG, budget_unit="bytes")
    suffix = "" if value_dtype == "fp32" else f":{value_dtype}"
    cell = run_method("dnis_blockmask" + suffix, ds, "mf", cfg, 0.3, 0)
    n, k, blocks = ds.num_features, cfg.dim, cfg.num_blocks
    sizes = make_boundaries(n, num_blocks=blocks).diff().tolist()
    dims = cell["block_dims"]
    assert dims == [len(c) for c in cell["block_columns"]] and min(dims) >= 1
    kept = sum(s * d for s, d in zip(sizes, dims))
    scale_bias = 4 * n if value_dtype == "int8" else 0
    meta = 8 * (blocks + 1) + blocks * 1 + scale_bias  # boundaries, K = 8 mask bits a block
    assert cell["kept_params"] == kept
    assert cell["stored_bytes"] == BYTES[value_dtype] * kept + meta
    budget = int(0.3 * 4 * n * k)
    room = [s for s, d in zip(sizes, dims) if d < k]
    assert cell["stored_bytes"] <= budget
    assert not room or budget - cell["stored_bytes"] < BYTES[value_dtype] * min(room)
    assert cell["value_dtype"] == value_dtype and cell["search_seconds"] > 0


def test_it_keeps_the_searched_weights_and_fine_tuning_keeps_the_mask(served):
    ds = _dataset(n=400)
    cfg = replace(CFG, budget_unit="bytes", finetune_epochs=2)
    plain = run_method("dnis_blockmask", ds, "mf", cfg, 0.3, 0)
    tuned = run_method("dnis_blockmask_ft", ds, "mf", cfg, 0.3, 0)
    assert plain["block_columns"] == tuned["block_columns"]
    bounds = make_boundaries(ds.num_features, num_blocks=cfg.num_blocks)
    block_mask = torch.zeros(cfg.num_blocks, cfg.dim, dtype=torch.bool)
    for block, columns in enumerate(plain["block_columns"]):
        block_mask[block, columns] = True
    rows = expand_block_mask(block_mask, bounds)
    merged = merged_table(searched(ds, "mf", cfg, 0, print)["model"].embedding)
    (before, mask_before), (after, mask_after) = (stored(m) for m in served)
    assert torch.equal(mask_before, rows) and torch.equal(mask_after, rows)
    assert torch.equal(before[rows], merged[rows])  # Ê itself on the mask, not retrained
    assert not after[~rows].any() and not torch.equal(after, before)  # tuned, mask fixed
    assert plain["valid"] != tuned["valid"]


def test_the_rotated_variant_keeps_the_rotated_table_and_only_where_rotation_is_exact(served):
    ds = _dataset(n=400)
    cfg = replace(CFG, budget_unit="bytes")
    cell = run_method("dnis_blockmask_rot", ds, "mf", cfg, 0.3, 0)
    merged = rotate_table(merged_table(searched(ds, "mf", cfg, 0, print)["model"].embedding))
    values, mask = stored(served[0])
    assert torch.equal(values[mask], merged[mask])
    assert sum(cell["block_dims"]) > 0
    with pytest.raises(NotApplicable):
        run_method("dnis_blockmask_rot_ft", ds, "neumf", cfg, 0.3, 0)
    # a model whose embeddings enter a linear layer takes the rotation into that layer
    unpruned = replace(cfg, budget_unit="params")
    run_method("dnis_blockmask_rot", ds, "deepfm", unpruned, 1.0, 0)
    source = searched(ds, "deepfm", unpruned, 0, print)["model"].eval()
    ids = ds.test.ids[:32]
    torch.testing.assert_close(served[-1].eval()(ids), source(ids), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("value_dtype", ["fp32", "int8"])
def test_svd_keeps_the_leading_singular_columns_of_uniform_k_stored_dense(served, value_dtype):
    ds = _dataset(n=400)
    cfg = replace(CFG, budget_unit="bytes", finetune_epochs=1)
    suffix = "" if value_dtype == "fp32" else f":{value_dtype}"
    cell = run_method("svd_ft" + suffix, ds, "mf", cfg, 0.3, 0)
    d = uniform_dim(0.3, cfg.dim, unit="bytes", value_dtype=value_dtype)
    assert cell["block_dims"] == [d] * cfg.num_blocks
    assert all(c == list(range(d)) for c in cell["block_columns"])
    assert cell["stored_bytes"] == dense_bytes(ds.num_features, d, value_dtype)
    assert "train_seconds" in cell and "search_seconds" not in cell


def test_the_magnitude_variant_allocates_on_the_uniform_k_table(served):
    ds = _dataset(n=400)
    cfg = replace(CFG, budget_unit="bytes", finetune_epochs=0)
    cell = run_method("magnitude_blockmask_ft", ds, "mf", cfg, 0.3, 0)
    table = uniform_k(ds, "mf", cfg, 0, print)["model"].embedding.weight.detach()
    values, mask = stored(served[0])
    assert torch.equal(values[mask], table[mask])
    assert "train_seconds" in cell and min(cell["block_dims"]) >= 1


def test_the_held_out_variant_searches_alpha_on_training_rows_apart(monkeypatch):
    """dnis_held_out_blockmask_rot_ft: its own search, with α's steps on 10 % of the
    training rows (alpha_split), not shared with the validation-α search."""
    import mixemb.methods.shared as shared

    splits = []
    real = shared.search

    def recording(model, ds, scfg, **kw):
        splits.append(scfg.alpha_split)
        return real(model, ds, scfg, **kw)

    shared.clear_cache()
    monkeypatch.setattr(shared, "search", recording)
    ds = _dataset(n=400)
    cfg = replace(CFG, budget_unit="bytes")
    for name in ("dnis_blockmask_rot_ft", "dnis_held_out_blockmask_rot_ft"):
        for budget in (0.3, 0.2):
            cell = run_method(name, ds, "mf", cfg, budget, 0)
            assert min(cell["block_dims"]) >= 1 and cell["stored_bytes"] <= (
                budget * 4 * ds.num_features * cfg.dim
            )
    assert splits == [0.0, family.HELD_OUT_FRACTION]


def test_the_lookup_mask_weighs_each_row_by_its_training_lookups(served, monkeypatch):
    """*_lookupmask_*: the block mask of Ê's column energies with each row weighted by its
    lookups in the training split (the plain block mask weighs rows alike)."""
    calls = []
    real = family.block_mask_prune

    def recording(merged, boundaries, keep, row_weights=None):
        calls.append(row_weights)
        return real(merged, boundaries, keep, row_weights)

    monkeypatch.setattr(family, "block_mask_prune", recording)
    ds = _dataset(n=400)
    cfg = replace(CFG, budget_unit="bytes", finetune_epochs=0)
    run_method("magnitude_lookupmask_rot_ft", ds, "mf", cfg, 0.3, 0)
    run_method("magnitude_blockmask_rot_ft", ds, "mf", cfg, 0.3, 0)
    counts = torch.bincount(ds.train.ids.flatten().long(), minlength=ds.num_features)
    assert torch.equal(calls[0], counts) and calls[1] is None
    warm = run_method("dnis_warm_lookupmask_rot_ft", ds, "mf", cfg, 0.3, 0)
    assert torch.equal(calls[2], counts) and warm["config"]["warmup_epochs"] == cfg.epochs
    for name in ("magnitude_sqrtlookupmask_rot_ft", "dnis_warm_sqrtlookupmask_rot_ft"):
        run_method(name, ds, "mf", cfg, 0.3, 0)
        torch.testing.assert_close(calls[-1], counts.double().sqrt())


@pytest.mark.parametrize(
    "model_name, value_dtype",
    [("mf", "fp32"), ("mf", "fp16"), ("mf", "bf16"), ("mf", "int8"), ("deepfm", "int8")],
)
def test_the_block_table_model_predicts_what_the_masked_model_with_rounded_values_did(
    model_name, value_dtype
):
    ds = _dataset(n=400)
    cfg = replace(CFG, budget_unit="bytes")
    model = searched(ds, model_name, cfg, 0, print)["model"]
    bounds, sizes = block_sizes(ds, cfg)
    keep = keep_entries(ds, cfg, 0.3, "blockmask", value_dtype)
    pruned, block_mask = block_mask_prune(merged_table(model.embedding), bounds, keep)
    masked = masked_model(model, pruned, expand_block_mask(block_mask, bounds)).eval()
    before = stored_model(masked, value_dtype)  # how the cells were evaluated before
    served = family.block_table_model(masked, bounds, block_mask, value_dtype)
    ids = ds.test.ids
    with torch.no_grad():
        torch.testing.assert_close(served(ids), before(ids), rtol=1e-6, atol=1e-6)
    assert evaluate(served, ds.test, ds.task) == pytest.approx(evaluate(before, ds.test, ds.task))
    dims = block_mask.sum(1).tolist()
    nbytes = block_tables_bytes(sizes, dims, value_dtype, mask_dim=cfg.dim)
    assert served.embedding.nbytes() == nbytes and served.embedding.table.value_dtype == value_dtype
