"""to_ragged: one budget over every searchable table, ragged twins swapped in place,
outputs equal to the twins' on the pruned merged tables, and a save/load round trip — on
a user's model and on mixemb's own (its SoftSelectEmbedding is a twin)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mixemb.models import build_model
from mixemb.nn import SoftSelectEmbedding, make_boundaries
from mixemb.nn.ragged import RaggedEmbedding
from mixemb.nn.ragged_bag import RaggedEmbeddingBag
from mixemb.nn.searchable import searchable, searchable_modules
from mixemb.prune.budget import InfeasibleBudget, ragged_bytes
from mixemb.prune.model_file import load, save
from mixemb.prune.pruners import merge_alpha, prune
from mixemb.prune.run import budget_entries
from mixemb.prune.to_ragged import to_ragged
from mixemb.ragged import expand_bits


class TwoTables(nn.Module):
    """An nn.Embedding, an nn.EmbeddingBag(mode="mean") and dense layers."""

    def __init__(self, bag_mode: str = "mean") -> None:
        super().__init__()
        self.user = nn.Embedding(40, 32, padding_idx=0)
        self.items = nn.EmbeddingBag(60, 48, mode=bag_mode, padding_idx=1)
        self.head = nn.Sequential(nn.Linear(80, 6), nn.ReLU(), nn.Linear(6, 1))

    def forward(self, users, items, offsets, per_sample_weights=None):
        pooled = self.items(items, offsets, per_sample_weights=per_sample_weights)
        return self.head(torch.cat([self.user(users), pooled], 1))


def _searched(bag_mode: str = "mean") -> TwoTables:
    """A fresh TwoTables (seed 0) made searchable, α of some blocks faded or zero."""
    torch.manual_seed(0)
    model = searchable(TwoTables(bag_mode), num_blocks=4)
    for twin in searchable_modules(model).values():
        twin.set_frequencies(torch.arange(twin.num_embeddings, 0, -1))
        with torch.no_grad():
            twin.alpha.uniform_(0.2, 1.0)
            twin.alpha[3, : twin.embedding_dim // 2] = 0  # the rarest block drops half
    return model.eval()


def _inputs():
    g = torch.Generator().manual_seed(5)
    users = torch.randint(0, 40, (7,), generator=g)
    users[0] = 0
    items = torch.randint(0, 60, (20,), generator=g)
    items[::5] = 1
    return users, items, torch.tensor([0, 3, 3, 8, 12, 13, 19])


def _with_tables(model: TwoTables, report_model: TwoTables) -> TwoTables:
    """``model``'s twins with their weights set to the served (pruned, merged) tables and
    α to ones: the twins' outputs on the pruned merged weights."""
    reference = copy.deepcopy(model)
    for name, twin in searchable_modules(reference).items():
        with torch.no_grad():
            twin.weight.copy_(report_model.get_submodule(name).table.to_dense())
            twin.alpha.fill_(1.0)
    return reference


def test_one_budget_over_both_tables_and_identical_outputs(tmp_path):
    model = _searched()
    twins = copy.deepcopy(model)
    merged = {n: t.merged_weight() for n, t in searchable_modules(model).items()}
    report = to_ragged(model, ratio=0.2)

    assert type(model.user) is RaggedEmbedding and type(model.items) is RaggedEmbeddingBag
    assert (model.items.mode, model.items.padding_idx) == ("mean", 1)
    dense = 4 * (40 * 32 + 60 * 48)
    assert report.dense_bytes == dense
    assert report.stored_bytes == model.user.nbytes() + model.items.nbytes()
    assert dense * 0.2 - 4 < report.stored_bytes <= dense * 0.2  # within one value
    assert report.stored_bytes == sum(
        ragged_bytes(t.num_embeddings, t.embedding_dim, t.kept) for t in report.tables
    )

    # one threshold over both tables: every kept |Ê| is >= every dropped one
    kept, dropped = [], []
    for name, table in merged.items():
        if name == "items":
            table[1] = 0  # the bag's padding row is never read
        served = model.get_submodule(name).table.to_dense()
        mask = served != 0
        assert torch.equal(served[mask], table[mask])
        kept.append(table[mask].abs())
        dropped.append(table[~mask].abs())
    assert torch.cat(kept).min() >= torch.cat(dropped).max()
    assert torch.cat(kept).min() == report.threshold
    assert report.tables[0].mean_dims == report.tables[0].kept / 40
    # the rarest block's half of the dimensions was α = 0: nothing stored there
    rare = searchable_modules(twins)["user"].block_map == 3
    assert not bool(model.user.table.to_dense()[rare, :16].any())

    expected = _with_tables(twins, model)(*_inputs())
    torch.testing.assert_close(model(*_inputs()), expected, rtol=1e-6, atol=1e-6)

    fresh = load(save(model, tmp_path / "m.pt"), TwoTables())
    assert torch.equal(fresh(*_inputs()), model(*_inputs()))


@pytest.mark.parametrize("value_dtype", [None, "fp16", "bf16", "int8"])
def test_byte_budget_counts_metadata_and_value_bytes(value_dtype):
    model = _searched("sum")
    report = to_ragged(model, nbytes=3000, value_dtype=value_dtype)
    stored = model.user.nbytes() + model.items.nbytes()
    assert report.stored_bytes == stored <= 3000
    size = {None: 4, "fp16": 2, "bf16": 2, "int8": 1}[value_dtype]
    assert 3000 - stored < size
    assert report.value_dtype == (value_dtype or "fp32")
    w = torch.rand(20)
    torch.testing.assert_close(
        model(*_inputs(), per_sample_weights=w),
        _with_tables(_searched("sum"), model)(*_inputs(), per_sample_weights=w),
        rtol=1e-2 if value_dtype else 1e-6,
        atol=1e-2 if value_dtype else 1e-6,
    )


def test_a_budget_above_the_tables_keeps_every_nonzero_entry():
    model = _searched("max")
    merged = {n: t.merged_weight() for n, t in searchable_modules(model).items()}
    merged["items"][1] = 0
    report = to_ragged(model, ratio=2.0)
    assert report.kept == sum(int(m.count_nonzero()) for m in merged.values())
    assert torch.equal(model.items.table.to_dense(), merged["items"])
    assert report.stored_bytes < report.budget_bytes


def test_a_shared_twin_is_replaced_under_every_name():
    model = _searched()
    model.alias = model.user
    to_ragged(model, ratio=0.5)
    assert model.alias is model.user and type(model.user) is RaggedEmbedding


def test_bad_budgets_and_models():
    with pytest.raises(InfeasibleBudget, match="metadata"):
        to_ragged(_searched(), nbytes=100)
    for kwargs, needle in [
        ({}, "exactly one"),
        ({"ratio": 0.2, "nbytes": 100}, "exactly one"),
        ({"ratio": 0.0}, "ratio"),
        ({"ratio": float("nan")}, "ratio"),
        ({"nbytes": 10.5}, "nbytes"),
        ({"ratio": 0.2, "value_dtype": "fp8"}, "fp8"),
    ]:
        model = _searched()
        with pytest.raises(ValueError, match=needle):
            to_ragged(model, **kwargs)
        assert searchable_modules(model)  # untouched
    with pytest.raises(ValueError, match="searchable"):
        to_ragged(TwoTables(), ratio=0.2)


def test_report_prints_a_table_with_totals():
    model = _searched()
    text = str(to_ragged(model, ratio=0.3))
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["table", "rows", "dim"]
    assert lines[1].startswith("user") and lines[2].startswith("items")
    assert lines[3].startswith("total") and "16,640" in lines[3]
    assert "values fp32" in lines[4]


def _mixemb_model(name: str) -> nn.Module:
    """mixemb's model ``name`` (3 fields) on a SoftSelectEmbedding of 50 ids, K = 24 and 4
    frequency blocks; α random, half of the rarest block's zero (seed 0)."""
    torch.manual_seed(0)
    emb = SoftSelectEmbedding(50, 24, make_boundaries(50, num_blocks=4))
    with torch.no_grad():
        emb.alpha.uniform_(0.2, 1.0)
        emb.alpha[3, :12] = 0
    return build_model(name, 50, 3, 24, embedding=emb).eval()


def _ids_and_values():
    """ids (9, 3) int64 with a repeated id, values (9, 3) float: numeric fields."""
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 50, (9, 3), generator=g)
    ids[1] = ids[0]
    return ids, 3 * torch.rand(9, 3, generator=g) - 1


@pytest.mark.parametrize("name", ["mf", "fm", "deepfm"])
def test_mixemb_models_are_pruned_saved_and_loaded(name, tmp_path):
    model = _mixemb_model(name)
    emb = model.embedding
    assert searchable_modules(model) == {"embedding": emb} and emb.has_frequencies
    merged = emb.merged_weight()
    assert torch.equal(merged, merge_alpha(emb.weight.detach(), emb.alpha.detach(), emb.boundaries))
    ids, values = _ids_and_values()
    torch.testing.assert_close(emb(ids), merged[ids], rtol=0, atol=0)  # what lookups see

    report = to_ragged(model, ratio=0.3)
    assert type(model.embedding) is RaggedEmbedding
    assert [t.name for t in report.tables] == ["embedding"]
    assert report.stored_bytes == model.embedding.nbytes() <= 0.3 * 4 * 50 * 24
    served = model.embedding.table.to_dense()
    mask = served != 0
    assert torch.equal(served[mask], merged[mask])
    assert merged[mask].abs().min() >= merged[~mask].abs().max()
    # the model on a plain table holding the served entries scores the same
    plain = build_model(name, 50, 3, 24).eval()
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("embedding.")}
    plain.load_state_dict({**state, "embedding.weight": served})
    assert torch.equal(model(ids, values), plain(ids, values))

    fresh = load(save(model, tmp_path / "m.pt"), build_model(name, 50, 3, 24))
    assert type(fresh.embedding) is RaggedEmbedding
    assert torch.equal(fresh(ids, values), model(ids, values))


@pytest.mark.parametrize("value_dtype", ["fp32", "int8"])
def test_a_count_of_entries_keeps_what_the_elementwise_pruner_keeps(value_dtype):
    """The CLI's budgets become a count of entries: to_ragged with the bytes of that
    count keeps the entries pruners.prune keeps, a threshold τ with ties at τ included."""
    model = _mixemb_model("fm")
    with torch.no_grad():  # ties at τ = 0.5: block 0's rows are ±0.5 at α = 1
        model.embedding.weight[:13] = 0.5 * torch.sign(torch.randn(13, 24))
        model.embedding.alpha[0] = 1.0
    merged = model.embedding.merged_weight()
    for budget in ({"tau": 0.5}, {"ratio": 0.25}, {"keep": 299}):
        twin = copy.deepcopy(model)
        count = budget_entries(merged, **budget, dtype=value_dtype)
        expected, kept = prune(merged, **budget)
        assert (
            kept.nnz == count
            if "tau" in budget
            else kept.nnz == min(count, int(merged.count_nonzero()))
        )
        to_ragged(twin, nbytes=ragged_bytes(50, 24, count, value_dtype), value_dtype=value_dtype)
        assert torch.equal(expand_bits(twin.embedding.masks, 24), expected != 0), budget
