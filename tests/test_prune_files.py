"""Searched model → merged, pruned, ragged model → one file → identical predictions."""

from __future__ import annotations

import pytest
import torch

from mixemb.models import build_model
from mixemb.nn import RaggedEmbedding, SoftSelectEmbedding, make_boundaries
from mixemb.prune import (
    PRUNED_KIND,
    InfeasibleBudget,
    load_pruned,
    merge_and_prune,
    ragged_metadata_bytes,
    save_pruned,
    to_ragged_model,
)
from mixemb.prune.finetune import dense_state
from mixemb.prune.model_file import restore
from mixemb.train import CheckpointError

IDS = torch.randint(0, 50, (64, 3), generator=torch.Generator().manual_seed(1))


def _searched(name="deepfm", n=50, k=12, fields=3):
    torch.manual_seed(0)
    emb = SoftSelectEmbedding(n, k, make_boundaries(n, num_blocks=5))
    with torch.no_grad():
        emb.alpha.uniform_(0, 1)
        emb.alpha[4, :6] = 0  # the rarest block drops half its dimensions
    kw = {"hidden": [16]} if name in ("deepfm", "mlp", "neumf", "wide_deep") else {}
    model = build_model(name, n, fields, k, embedding=emb, **kw)
    with torch.no_grad():
        for p in model.first_order_parameters():
            p.normal_()
    return model.eval()


@pytest.mark.parametrize("name", ["mf", "fm", "deepfm", "neumf"])
def test_unpruned_export_predicts_exactly_like_the_searched_model(name):
    model = _searched(name)
    pruned, report = merge_and_prune(model.embedding, ratio=1.0)
    serving = to_ragged_model(model, pruned)
    ids = torch.randint(0, 50, (32, 3))
    torch.testing.assert_close(serving(ids), model(ids), rtol=1e-6, atol=1e-6)
    assert report.dims[-10:].max() <= 6  # α zeros are not stored


def test_budget_is_hit_and_rare_block_keeps_less():
    model = _searched()
    pruned, report = merge_and_prune(model.embedding, ratio=0.2)
    assert report.nnz == round(0.2 * 50 * 12)
    serving = to_ragged_model(model, pruned)
    assert serving.embedding.table.nnz == report.nnz
    assert torch.equal(serving.embedding.table.to_dense(), pruned)


def test_byte_budget_counts_metadata():
    model = _searched()
    budget = ragged_metadata_bytes(50, 12) + 4 * 100
    pruned, report = merge_and_prune(model.embedding, nbytes=budget)
    serving = to_ragged_model(model, pruned)
    assert report.nnz == 100
    assert serving.embedding.nbytes() == budget
    with pytest.raises(InfeasibleBudget, match="metadata"):
        merge_and_prune(model.embedding, nbytes=10)
    assert merge_and_prune(model.embedding, nbytes=10**6)[1].nnz == 50 * 12 - 10 * 6  # all


def test_save_load_round_trip_identical_predictions(tmp_path):
    model = _searched()
    pruned, _ = merge_and_prune(model.embedding, ratio=0.3)
    serving = to_ragged_model(model, pruned)
    path = save_pruned(serving, tmp_path / "m.pt", encoder={"frequencies": [3, 2, 1]})
    loaded, obj = load_pruned(path)
    ids = torch.randint(0, 50, (64, 3))
    assert torch.equal(loaded(ids), serving(ids))
    assert isinstance(loaded.embedding, RaggedEmbedding)
    assert obj["encoder"] == {"frequencies": [3, 2, 1]}
    torch.load(path, weights_only=True)  # safe to load


def test_truncated_or_tampered_pruned_file(tmp_path):
    model = _searched()
    serving = to_ragged_model(model, merge_and_prune(model.embedding, ratio=0.3)[0])
    path = save_pruned(serving, tmp_path / "m.pt")
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_pruned(tmp_path / "cut.pt")
    obj = torch.load(path, weights_only=True)
    table = obj["tables"]["embedding"]["table"]
    table["values"] = table["values"][:-2]
    torch.save(obj, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="table 'embedding'"):
        load_pruned(tmp_path / "bad.pt")
    del obj["tables"]
    torch.save(obj, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="damaged pruned model"):
        load_pruned(tmp_path / "bad.pt")


def test_half_precision_values():
    model = _searched("fm")
    pruned, _ = merge_and_prune(model.embedding, ratio=0.5)
    serving = to_ragged_model(model, pruned, value_dtype=torch.float16)
    assert serving.embedding.values.dtype == torch.float16
    ids = torch.randint(0, 50, (8, 3))
    ref = to_ragged_model(model, pruned)(ids)
    torch.testing.assert_close(serving(ids).float(), ref, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize(
    "key,value",
    [("embedding.group_offsets", torch.tensor([2**40])), ("embedding.masks", None)],
)
def test_dense_weights_may_not_overwrite_the_table(tmp_path, key, value):
    model = _searched()
    serving = to_ragged_model(model, merge_and_prune(model.embedding, ratio=0.3)[0])
    obj = torch.load(save_pruned(serving, tmp_path / "m.pt"), weights_only=True)
    masks = obj["tables"]["embedding"]["table"]["masks"]
    obj["state"][key] = value if value is not None else torch.full_like(masks, -1)
    torch.save(obj, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="would overwrite the ragged table"):
        load_pruned(tmp_path / "bad.pt")


def test_model_config_must_match_the_table(tmp_path):
    model = _searched("fm")
    serving = to_ragged_model(model, merge_and_prune(model.embedding, ratio=0.3)[0])
    obj = torch.load(save_pruned(serving, tmp_path / "m.pt"), weights_only=True)
    obj["model_config"]["num_features"] = 10**15
    torch.save(obj, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="model config says"):
        load_pruned(tmp_path / "bad.pt")


def test_the_file_is_a_model_file_plus_the_config(tmp_path):
    model = _searched("neumf")
    serving = to_ragged_model(model, merge_and_prune(model.embedding, ratio=0.3)[0])
    path = save_pruned(serving, tmp_path / "m.pt", report={"k": 5})
    obj = torch.load(path, weights_only=True)
    assert obj["kind"] == PRUNED_KIND and obj["model_config"] == serving.config
    assert sorted(obj["tables"]) == ["embedding"] and obj["report"] == {"k": 5}
    fresh = build_model(**serving.config)  # mixemb.load reads the same tables and state
    assert torch.equal(restore(path, obj, fresh)(IDS), serving(IDS))
    with pytest.raises(ValueError, match="'tables' is a layout entry"):
        save_pruned(serving, tmp_path / "x.pt", tables={})


def _first_layout(serving, path, **extra):
    """A pruned file in the layout written before it was a model file."""
    obj = {
        "kind": PRUNED_KIND,
        "model_config": dict(serving.config),
        "dense_state": dense_state(serving),
        "table": serving.embedding.table.state_dict(),
        **extra,
    }
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("value_dtype", [None, torch.float16, "int8"])
def test_a_file_of_the_first_layout_still_loads(tmp_path, value_dtype):
    model = _searched()
    pruned = merge_and_prune(model.embedding, ratio=0.3)[0]
    serving = to_ragged_model(model, pruned, value_dtype=value_dtype)
    path = _first_layout(serving, tmp_path / "old.pt", encoder={"frequencies": [2, 1]})
    old, obj = load_pruned(path)
    new, _ = load_pruned(save_pruned(serving, tmp_path / "new.pt"))
    assert not old.training and obj["encoder"] == {"frequencies": [2, 1]}
    assert torch.equal(old(IDS), serving(IDS)) and torch.equal(new(IDS), old(IDS))
    bad = dense_state(serving) | {"embedding.masks": torch.zeros(1)}
    torch.save({**torch.load(path, weights_only=True), "dense_state": bad}, path)
    with pytest.raises(CheckpointError, match="would overwrite the ragged table"):
        load_pruned(path)
