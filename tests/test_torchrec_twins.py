"""mixemb.nn.torchrec_twins and torchrec_rows (the mixemb[torchrec] extra): the twins
against EmbeddingBagCollection / EmbeddingCollection (α all ones: outputs and table
gradients), their α gradient against the reference op composed with pooling, the
scale-out pooling over EmbeddingCollection lookups against the twin, a dnis search, the
ragged serving twin, save/load, torch.export with KJT input, argument errors."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("torchrec", reason="the mixemb[torchrec] extra is not installed")

from torchrec import (  # noqa: E402
    EmbeddingBagCollection,
    EmbeddingBagConfig,
    EmbeddingCollection,
    EmbeddingConfig,
    KeyedJaggedTensor,
    PoolingType,
)

import mixemb  # noqa: E402
from mixemb.nn import RaggedEmbeddingBag, searchable_modules  # noqa: E402
from mixemb.nn.searchable import pool  # noqa: E402
from mixemb.nn.torchrec_rows import (  # noqa: E402
    RowsSoftSelect,
    SoftSelectPooling,
    bag_twin,
    unpooled_configs,
)
from mixemb.nn.torchrec_twins import (  # noqa: E402
    EmbeddingBagCollectionTwin,
    EmbeddingCollectionTwin,
    kjt_dynamic_shapes,
)
from mixemb.ops import soft_select_lookup  # noqa: E402
from mixemb.ops.soft_select_pooled import bag_of_lookups  # noqa: E402

SUM, MEAN = PoolingType.SUM, PoolingType.MEAN

# (tables as (name, N, K, pooling, features), KJT keys, lengths per key (F·B), is_weighted).
# "shared": t1 serves f1 and f2, f1 is served by t1 and t2 (keys f1@t1, f1@t2), f2 has no
# id in the batch, f3 an empty bag, K = 5 not a power of two; ids repeat (id 3 is hot).
CASES = {
    "shared": (
        [("t1", 11, 4, SUM, ["f1", "f2"]), ("t2", 7, 5, MEAN, ["f3", "f1"])],
        ["f1", "f2", "f3"],
        [2, 0, 3, 0, 0, 0, 1, 4, 0],
        False,
    ),
    "one-row": ([("t1", 1, 1, MEAN, ["f1"])], ["f1"], [3], False),
    "weighted": ([("t1", 11, 4, SUM, ["f1", "f2"])], ["f1", "f2"], [2, 0, 3, 1, 1, 2], True),
    "no-ids": ([("t1", 11, 4, MEAN, ["f1"])], ["f1"], [0, 0], False),
}


def _kjt(case: str, seed: int = 0, lengths: list[int] | None = None) -> KeyedJaggedTensor:
    """The case's KJT (or one with other lengths): random ids, every other one id 3 (hot)."""
    tables, keys, default, weighted = CASES[case]
    lengths = torch.tensor(default if lengths is None else lengths, dtype=torch.int64)
    rows = {f: min(n for _, n, _, _, fs in tables if f in fs) for f in keys}
    g = torch.Generator().manual_seed(seed)
    values = []
    for f, n in zip(keys, lengths.view(len(keys), -1).sum(1).tolist()):
        ids = torch.randint(0, rows[f], (n,), generator=g)
        ids[::2] = 3 % rows[f]
        values.append(ids)
    values = torch.cat(values)
    weights = torch.rand(values.shape, generator=g) if weighted else None
    return KeyedJaggedTensor.from_lengths_sync(keys, values, lengths, weights=weights)


def _ebc(case: str, seed: int = 0, dim: int | None = None) -> EmbeddingBagCollection:
    """The case's bag collection (every table of dimension ``dim`` when given)."""
    torch.manual_seed(seed)
    tables, _, _, weighted = CASES[case]
    configs = [EmbeddingBagConfig(num_embeddings=n, embedding_dim=dim or k, name=name,
                                  pooling=p, feature_names=list(f))
               for name, n, k, p, f in tables]  # fmt: skip
    return EmbeddingBagCollection(tables=configs, is_weighted=weighted)


def _ec(case: str, seed: int = 0, need_indices: bool = False) -> EmbeddingCollection:
    torch.manual_seed(seed)
    configs = [EmbeddingConfig(num_embeddings=n, embedding_dim=4, name=name, feature_names=list(f))
               for name, n, _, _, f in CASES[case][0]]  # fmt: skip
    return EmbeddingCollection(tables=configs, need_indices=need_indices)


def _twin(collection: nn.Module) -> nn.Module:
    """The twin ``mixemb.searchable`` swaps in for a TorchRec collection (3 blocks)."""
    return mixemb.searchable(nn.ModuleDict({"c": collection}), num_blocks=3)["c"]


def _dout(shape, seed: int = 1) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _table_grads(module: nn.Module, run) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(output values, {parameter name: grad}) of run() · dout."""
    module.zero_grad(set_to_none=True)
    out = run()
    out.backward(_dout(out.shape))
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    return out.detach(), grads


def _searched(twin: nn.Module, seed: int = 2) -> None:
    """Give every table of ``twin`` a random α in [0, 1] and per-id frequencies."""
    g = torch.Generator().manual_seed(seed)
    for table in searchable_modules(twin).values():
        with torch.no_grad():
            table.alpha.copy_(torch.rand(table.alpha.shape, generator=g))
        table.set_frequencies(torch.randint(0, 50, (table.num_embeddings,), generator=g))


def _assert_same(got: torch.Tensor, want: torch.Tensor, exact: bool, what: str) -> None:
    """Bit for bit, or (exact False) to the last bits: torch's CPU embedding_bag sums
    per-sample-weighted rows in another kernel than mixemb's reference bag op takes."""
    if exact:
        bad = (got != want).nonzero()
        assert not len(bad), f"{what}: {len(bad)} entries differ, first at {bad[:3].tolist()}"
    else:
        torch.testing.assert_close(got, want, rtol=2e-7, atol=1e-7, msg=what)


@pytest.mark.parametrize("case", sorted(CASES))
def test_ebc_twin_equals_ebc_with_alpha_one(case):
    ebc, kjt = _ebc(case), _kjt(case)
    ref, ref_grads = _table_grads(ebc, lambda: ebc(kjt).values())
    twin = _twin(ebc)
    _searched(twin)
    for table in searchable_modules(twin).values():
        table.alpha.data.fill_(1.0)
    out_kt = twin(kjt)
    assert out_kt.keys() == ebc(kjt).keys()
    assert out_kt.length_per_key() == ebc(kjt).length_per_key()
    out, grads = _table_grads(twin, lambda: twin(kjt).values())
    exact = not ebc.is_weighted()
    _assert_same(out, ref, exact, "output")
    for name, grad in ref_grads.items():  # the twin shares the weight Parameters
        _assert_same(grads[name], grad, exact, name)


def test_ebc_twin_equals_ebc_on_variable_batch():
    """A KJT of a batch size per feature, expanded by its inverse indices (f1: 2 rows,
    f2: 3, both to 4)."""
    ebc = _ebc("shared")
    kjt = KeyedJaggedTensor(
        keys=["f1", "f2", "f3"], values=torch.tensor([1, 2, 3, 4, 5, 6]),
        lengths=torch.tensor([1, 2, 0, 1, 1, 0, 1]), stride_per_key_per_rank=[[2], [3], [2]],
        inverse_indices=(["f1", "f2", "f3"], torch.tensor([[0, 1, 1, 0], [2, 1, 0, 0], [1] * 4])),
    )  # fmt: skip
    ref, ref_grads = _table_grads(ebc, lambda: ebc(kjt).values())
    twin = _twin(ebc)
    out, grads = _table_grads(twin, lambda: twin(kjt).values())
    assert out.shape == (4, 18)
    _assert_same(out, ref, True, "output")
    for name, grad in ref_grads.items():
        _assert_same(grads[name], grad, True, name)


@pytest.mark.parametrize("need_indices", [False, True])
@pytest.mark.parametrize("case", ["shared", "one-row", "no-ids"])
def test_ec_twin_equals_ec_with_alpha_one(case, need_indices):
    ec, kjt = _ec(case, need_indices=need_indices), _kjt(case)
    twin = _twin(ec)
    _searched(twin)
    for table in searchable_modules(twin).values():
        table.alpha.data.fill_(1.0)
    ref, out = ec(kjt), twin(kjt)
    assert list(out) == list(ref)
    for key, jt in ref.items():
        _assert_same(out[key].values(), jt.values(), True, key)
        assert torch.equal(out[key].lengths(), jt.lengths())
        assert (out[key].weights_or_none() is None) == (not need_indices)
        if need_indices:
            assert torch.equal(out[key].weights(), jt.weights())

    def run(module):
        return lambda: torch.cat([jt.values() for jt in module(kjt).values()])

    _, ref_grads = _table_grads(ec, run(ec))
    _, grads = _table_grads(twin, run(twin))
    for name, grad in ref_grads.items():
        _assert_same(grads[name], grad, True, name)


def _reference_pooled(twin: EmbeddingBagCollectionTwin, kjt, alphas, l1) -> torch.Tensor:
    """The twin's output from the reference lookup op, then pooling, feature by feature."""
    jagged, pooled = kjt.to_dict(), []
    for config in twin.embedding_bag_configs():
        table = twin.embedding_bags[config.name]
        for name in config.feature_names:
            f = jagged[name]
            rows = soft_select_lookup(table.weight.detach(), alphas[config.name], None,
                                      f.values(), block_map=table.block_map, l1=l1,
                                      backend="reference")  # fmt: skip
            if twin.is_weighted():
                rows = rows * f.weights().unsqueeze(1)
            bags = bag_of_lookups(f.values(), f.offsets())
            pooled.append(pool(rows, bags, f.offsets().numel() - 1, table.mode))
    return torch.cat(pooled, 1)


@pytest.mark.parametrize("l1", [0.0, 0.01])
@pytest.mark.parametrize("case", sorted(CASES))
def test_ebc_twin_alpha_grad_equals_reference_op_and_pooling(case, l1):
    twin, kjt = _twin(_ebc(case)), _kjt(case)
    _searched(twin)
    for table in searchable_modules(twin).values():
        table.l1 = l1
    out = twin(kjt).values()
    out.backward(_dout(out.shape))
    alphas = {name: t.alpha.detach().clone().requires_grad_()
              for name, t in twin.embedding_bags.items()}  # fmt: skip
    ref = _reference_pooled(twin, kjt, alphas, l1)
    torch.testing.assert_close(out.detach(), ref, rtol=1e-6, atol=1e-6)
    ref.backward(_dout(out.shape))
    for name, t in twin.embedding_bags.items():
        torch.testing.assert_close(t.alpha.grad, alphas[name].grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", ["shared", "weighted", "no-ids"])
def test_pooling_of_ec_lookups_equals_ebc_twin(case):
    """The scale-out path: TorchRec's EmbeddingCollection looks up, SoftSelectPooling
    applies α and pools; outputs and every gradient as the twin of the same tables."""
    ebc, kjt = _ebc(case, dim=4), _kjt(case)  # an EmbeddingCollection has one dim
    twin = _twin(ebc)
    _searched(twin)
    ec = EmbeddingCollection(tables=unpooled_configs(ebc.embedding_bag_configs()))
    pooling = SoftSelectPooling.from_module(ebc, num_blocks=3)
    with torch.no_grad():
        for name, table in twin.embedding_bags.items():
            ec.embeddings[name].weight.copy_(table.weight)
            pooling.tables[name].alpha.copy_(table.alpha)
            pooling.tables[name].block_map.copy_(table.block_map)
    want, want_grads = _table_grads(twin, lambda: twin(kjt).values())
    model = nn.ModuleDict({"ec": ec, "pooling": pooling})
    got_kt = pooling(kjt, ec(kjt))
    assert got_kt.keys() == twin(kjt).keys()
    got, grads = _table_grads(model, lambda: pooling(kjt, ec(kjt)).values())
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    for name in twin.embedding_bags:
        pairs = ((f"ec.embeddings.{name}.weight", f"embedding_bags.{name}.weight"),
                 (f"pooling.tables.{name}.alpha", f"embedding_bags.{name}.alpha"))  # fmt: skip
        for mine, theirs in pairs:
            torch.testing.assert_close(grads[mine], want_grads[theirs], rtol=1e-5, atol=1e-6)


def test_rows_soft_select_gradients():
    """rows ⊙ α[block_map[ids]]: the rows' gradient α[block] ⊙ dout, α's the lookup op's."""
    g = torch.Generator().manual_seed(0)
    table = torch.randn(11, 5, generator=g)
    ids = torch.tensor([3, 3, 0, 10, 3, 7])
    holder = RowsSoftSelect(11, 5, num_blocks=4, l1=0.01)
    holder.set_frequencies(torch.randint(0, 9, (11,), generator=g))
    with torch.no_grad():
        holder.alpha.copy_(torch.rand(4, 5, generator=g))
    rows = table[ids].clone().requires_grad_()
    out = holder(ids, rows)
    dout = _dout(out.shape)
    out.backward(dout)
    alpha = holder.alpha.detach().clone().requires_grad_()
    ref = soft_select_lookup(table, alpha, None, ids, block_map=holder.block_map, l1=0.01,
                             backend="reference")  # fmt: skip
    ref.backward(dout)
    torch.testing.assert_close(out.detach(), ref.detach(), rtol=0, atol=0)
    torch.testing.assert_close(rows.grad, holder.alpha.detach()[holder.block_map[ids]] * dout)
    torch.testing.assert_close(holder.alpha.grad, alpha.grad, rtol=1e-6, atol=1e-7)
    empty = holder(ids[:0], rows[:0])
    assert empty.shape == (0, 5)


class Ranker(nn.Module):
    """A small model over the "shared" tables: its EBC, then a linear head."""

    def __init__(self):
        super().__init__()
        self.sparse = _ebc("shared")
        self.head = nn.Linear(18, 1)

    def forward(self, features):
        return self.head(self.sparse(features).values()).squeeze(1)


def _batches(n: int, seed: int, batch: int = 8):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        lengths = torch.randint(0, 4, (3 * batch,), generator=g).tolist()
        kjt = _kjt("shared", seed=seed * 100 + i, lengths=lengths)
        out.append(((kjt,), (torch.rand(batch, generator=g) < 0.5).float()))
    return out


def test_dnis_trains_the_twin_and_to_ragged_serves_it(tmp_path):
    model = Ranker()
    model.sparse = _twin(model.sparse)
    tables = searchable_modules(model)
    assert sorted(tables) == ["sparse.embedding_bags.t1", "sparse.embedding_bags.t2"]
    before = {name: t.alpha.detach().clone() for name, t in tables.items()}
    weights = {name: t.weight.detach().clone() for name, t in tables.items()}
    mixemb.dnis(model, _batches(6, 0), _batches(3, 1), nn.BCEWithLogitsLoss(), epochs=2,
                alpha_lr=0.05, log=lambda line: None)  # fmt: skip
    for name, t in tables.items():
        assert bool(t.has_frequencies), name
        assert not torch.equal(t.alpha.detach(), before[name]), f"{name}: α did not move"
        assert not torch.equal(t.weight.detach(), weights[name]), f"{name}: table did not train"
        assert 0 <= float(t.alpha.detach().min()) <= float(t.alpha.detach().max()) <= 1

    kjt = _kjt("shared", seed=7)
    model.eval()
    with torch.no_grad():
        searched = model(kjt)
    nonzero = sum(int(t.merged_weight().count_nonzero()) for t in tables.values())
    report = mixemb.to_ragged(model, ratio=4.0)  # room for every entry: nothing pruned
    assert report.kept == nonzero
    assert all(isinstance(b, RaggedEmbeddingBag) for b in model.sparse.embedding_bags.values())
    with torch.no_grad():
        served = model(kjt)
    torch.testing.assert_close(served, searched, rtol=1e-6, atol=1e-6)

    mixemb.save(model, tmp_path / "ranker.pt")  # into a fresh model holding a plain EBC
    fresh = mixemb.load(tmp_path / "ranker.pt", Ranker())
    assert type(fresh.sparse) is EmbeddingBagCollection
    with torch.no_grad():
        assert torch.equal(fresh(kjt), served)


def _exported_equals_eager(module: nn.Module, kjt, others, flat) -> torch.export.ExportedProgram:
    program = torch.export.export(module, (kjt,), dynamic_shapes=(kjt_dynamic_shapes(kjt),),
                                  strict=False)  # fmt: skip
    for features in [kjt, *others]:
        assert torch.equal(flat(program.module()(features)), flat(module(features)))
    return program


def _other_kjts(case: str) -> list[KeyedJaggedTensor]:
    """The case's keys with other batch sizes and numbers of ids (none at all too)."""
    keys = CASES[case][1]
    return [_kjt(case, seed=3, lengths=[1, 4, 2, 0, 3] * len(keys)),
            _kjt(case, seed=4, lengths=[0, 0] * len(keys))]  # fmt: skip


@pytest.mark.parametrize("offsets", [False, True])
@pytest.mark.parametrize("case", ["shared", "weighted"])
def test_export_ebc_twin_with_kjt_input(case, offsets):
    twin = _twin(_ebc(case))
    _searched(twin)
    kjt, others = _kjt(case), _other_kjts(case)
    if offsets:  # a KJT that computed its offsets flattens them too
        for features in [kjt, *others]:
            features.offsets()
    program = _exported_equals_eager(twin, kjt, others, lambda kt: kt.values())
    assert "torch.ops.mixemb.soft_select_bag" in program.graph_module.code


def test_export_ec_twin_with_kjt_input():
    twin = _twin(_ec("shared"))
    _searched(twin)

    def flat(out):
        return torch.cat([torch.cat([jt.values().reshape(-1), jt.lengths().float()])
                          for jt in out.values()])  # fmt: skip

    program = _exported_equals_eager(twin, _kjt("shared"), _other_kjts("shared"), flat)
    assert "torch.ops.mixemb.soft_select.default" in program.graph_module.code


def test_export_ragged_serving_twin_with_kjt_input():
    model = Ranker()
    model.sparse = _twin(model.sparse)
    _searched(model)
    report = mixemb.to_ragged(model, ratio=1.0)
    assert 0 < report.kept < sum(t.num_embeddings * t.embedding_dim for t in report.tables)
    program = _exported_equals_eager(model.eval(), _kjt("shared"), _other_kjts("shared"),
                                     lambda y: y.detach())  # fmt: skip
    assert "torch.ops.mixemb.ragged_bag" in program.graph_module.code


class _TwoCollections(nn.Module):
    """An EBC beside an nn.Embedding, and an EC: ``searchable`` replaces the collections
    whole (never the nn modules inside them) and the nn.Embedding by its twin."""

    def __init__(self):
        super().__init__()
        self.sparse = _ebc("shared")
        self.seq = _ec("shared")
        self.user = nn.Embedding(5, 3)
        self.head = nn.Linear(18 + 3, 1)

    def forward(self, features, users):
        rows = self.seq(features)
        extra = sum(jt.values().sum() for jt in rows.values())
        x = torch.cat([self.sparse(features).values(), self.user(users)], 1)
        return self.head(x).squeeze(1) + extra


def test_searchable_swaps_a_whole_collection_for_its_twin():
    model = _TwoCollections()
    original = copy.deepcopy(model)
    weight = model.sparse.embedding_bags["t1"].weight
    counts = torch.arange(11)
    freqs = {"sparse.embedding_bags.t1": counts, "seq.embeddings.t2": torch.arange(7)}
    assert mixemb.searchable(model, freqs, num_blocks=3) is model
    assert type(model.sparse) is EmbeddingBagCollectionTwin
    assert type(model.seq) is EmbeddingCollectionTwin
    assert sorted(searchable_modules(model)) == [
        "seq.embeddings.t1", "seq.embeddings.t2", "sparse.embedding_bags.t1",
        "sparse.embedding_bags.t2", "user",
    ]  # fmt: skip
    t1 = model.sparse.embedding_bags["t1"]
    assert t1.weight is weight and t1.num_blocks == 3 and bool(t1.has_frequencies)
    assert t1.block_map.tolist() == [2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0]  # the most counted: 0
    assert bool(model.seq.embeddings["t2"].has_frequencies)
    assert not bool(model.sparse.embedding_bags["t2"].has_frequencies)
    kjt, users = _kjt("shared"), torch.tensor([0, 4, 2])
    with torch.no_grad():  # α all ones: the original's outputs bit for bit
        assert torch.equal(model(kjt, users), original(kjt, users))


def test_searchable_include_names_the_collection():
    model = mixemb.searchable(_TwoCollections(), include=["seq"])
    assert type(model.seq) is EmbeddingCollectionTwin
    assert type(model.sparse) is EmbeddingBagCollection and type(model.user) is nn.Embedding
    with pytest.raises(ValueError, match="'sparse.embedding_bags.t1', a table of the TorchRec "
                                         "collection 'sparse': name the collection"):  # fmt: skip
        mixemb.searchable(_TwoCollections(), include=["sparse.embedding_bags.t1"])
    with pytest.raises(ValueError, match=r"frequencies names no embedding module.*\['sparse'\]"):
        mixemb.searchable(_TwoCollections(), {"sparse": torch.ones(11)})
    with pytest.raises(ValueError, match="'sparse.embedding_bags.t1', which is not made searc"):
        mixemb.searchable(_TwoCollections(), {"sparse.embedding_bags.t1": torch.ones(11)},
                          include=["seq"])  # fmt: skip
    with pytest.raises(ValueError, match="itself a TorchRec collection: wrap it"):
        mixemb.searchable(_ebc("shared"))
    shared = _TwoCollections()
    shared.alias = shared.sparse  # one collection under two names: one twin
    mixemb.searchable(shared)
    assert shared.alias is shared.sparse and type(shared.sparse) is EmbeddingBagCollectionTwin


def test_searchable_model_exports_and_searches():
    """searchable on a model holding an EBC: torch.export with KJT input, then dnis."""
    model = mixemb.searchable(Ranker(), num_blocks=3)
    assert type(model.sparse) is EmbeddingBagCollectionTwin
    _searched(model)
    kjt = _kjt("shared")
    program = _exported_equals_eager(model.eval(), kjt, _other_kjts("shared"), lambda y: y)
    assert "torch.ops.mixemb.soft_select_bag" in program.graph_module.code
    model = mixemb.searchable(Ranker(), num_blocks=3)
    before = {n: t.alpha.detach().clone() for n, t in searchable_modules(model).items()}
    mixemb.dnis(model, _batches(4, 0), _batches(2, 1), nn.BCEWithLogitsLoss(), epochs=1,
                alpha_lr=0.05, log=lambda line: None)  # fmt: skip
    for name, t in searchable_modules(model).items():
        assert bool(t.has_frequencies), name
        assert not torch.equal(t.alpha.detach(), before[name]), f"{name}: α did not move"


class _ShardedRanker(nn.Module):
    """The scale-out layout: an EmbeddingCollection (TorchRec shards it) looks the rows
    up, SoftSelectPooling applies α and pools as the "shared" EBC would."""

    def __init__(self):
        super().__init__()
        configs = _ebc("shared", dim=4).embedding_bag_configs()
        torch.manual_seed(0)
        self.lookup = EmbeddingCollection(tables=unpooled_configs(configs))
        self.pooling = SoftSelectPooling(configs, num_blocks=3)
        self.head = nn.Linear(16, 1)

    def forward(self, features):
        return self.head(self.pooling(features, self.lookup(features)).values()).squeeze(1)


def test_dnis_drives_the_alpha_holders_and_to_ragged_refuses_them():
    model = _ShardedRanker()
    holders = searchable_modules(model)
    assert sorted(holders) == ["pooling.tables.t1", "pooling.tables.t2"]
    assert all(type(h) is RowsSoftSelect for h in holders.values())
    before = {n: h.alpha.detach().clone() for n, h in holders.items()}
    tables = {n: t.weight.detach().clone() for n, t in model.lookup.embeddings.items()}
    mixemb.dnis(model, _batches(4, 0), _batches(2, 1), nn.BCEWithLogitsLoss(), epochs=1,
                alpha_lr=0.05, log=lambda line: None)  # fmt: skip
    for name, h in holders.items():  # frequencies counted by dnis's pass over the batches
        assert bool(h.has_frequencies), f"{name}: ids not counted"
        assert not torch.equal(h.alpha.detach(), before[name]), f"{name}: α did not move"
        assert 0 <= float(h.alpha.detach().min()) <= float(h.alpha.detach().max()) <= 1
    for name, t in model.lookup.embeddings.items():
        assert not torch.equal(t.weight.detach(), tables[name]), f"{name}: table did not train"
    refused = r"'pooling.tables.t1' is a RowsSoftSelect: its table is owned by TorchRec"
    with pytest.raises(ValueError, match=refused + r".*bag_twin\(pooling, tables\)"):
        mixemb.to_ragged(model, ratio=0.5)
    assert type(model.pooling.tables["t1"]) is RowsSoftSelect  # nothing replaced

    # what the message says: the pooling over the gathered tables as a bag twin, pruned
    weights = {n: t.weight for n, t in model.lookup.embeddings.items()}
    twin = bag_twin(model.pooling, weights)
    kjt = _kjt("shared", seed=9)
    with torch.no_grad():
        want = model.pooling(kjt, model.lookup(kjt)).values()
        torch.testing.assert_close(twin(kjt).values(), want, rtol=1e-6, atol=1e-6)
    for name, bag in twin.embedding_bags.items():
        holder = model.pooling.tables[name]
        assert torch.equal(bag.alpha, holder.alpha) and bag.alpha is not holder.alpha
        assert torch.equal(bag.block_map, holder.block_map) and bool(bag.has_frequencies)
        assert bag.l1 == holder.l1
    served = nn.ModuleDict({"sparse": twin})
    report = mixemb.to_ragged(served, ratio=4.0)  # room for every entry
    assert [t.name for t in report.tables] == [
        "sparse.embedding_bags.t1",
        "sparse.embedding_bags.t2",
    ]
    with torch.no_grad():
        torch.testing.assert_close(twin(kjt).values(), want, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"tables must name the pooling's tables \['t1', 't2'\]"):
        bag_twin(model.pooling, {"t1": weights["t1"]})
    with pytest.raises(ValueError, match=r"tables\['t2'\] must be a \(7, 4\) tensor, got \(7, 5\)"):
        bag_twin(model.pooling, {**weights, "t2": torch.zeros(7, 5)})


def test_argument_errors():
    ebc, ec = _ebc("shared"), _ec("shared")
    with pytest.raises(ValueError, match="must be a torchrec EmbeddingBagCollection, got Embedd"):
        SoftSelectPooling.from_module(ec)
    twin = _twin(ebc)
    bags = dict(twin.embedding_bags.items())
    with pytest.raises(ValueError, match=r"tables \['t1'\] do not match the configs"):
        EmbeddingBagCollectionTwin(ebc.embedding_bag_configs(), {"t1": bags["t1"]})
    with pytest.raises(ValueError, match="table 't1' is \\(7, 5\\), its config says \\(11, 4\\)"):
        EmbeddingBagCollectionTwin(
            ebc.embedding_bag_configs(), {"t1": bags["t2"], "t2": bags["t2"]}
        )
    with pytest.raises(ValueError, match="table 't2' must pool 'mean'"):
        EmbeddingBagCollectionTwin(
            ebc.embedding_bag_configs(),
            {
                "t1": bags["t1"],
                "t2": mixemb.nn.SearchableEmbeddingBag(7, 5, mode="sum", include_last_offset=True),
            },
        )
    with pytest.raises(ValueError, match="is_weighted needs every table to pool 'sum'"):
        SoftSelectPooling(ebc.embedding_bag_configs(), is_weighted=True)
    holder = RowsSoftSelect(11, 4)
    with pytest.raises(ValueError, match=r"ids must be \(n,\) and rows \(n, K\)"):
        holder(torch.tensor([1, 2]), torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"ids\[1\] \(flattened\) = 11 is outside"):
        holder(torch.tensor([1, 11]), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"counts must be \(11,\)"):
        holder.set_frequencies(torch.ones(10))
    with pytest.raises(ValueError, match="num_blocks must be an int >= 1, got 0"):
        RowsSoftSelect(11, 4, num_blocks=0)
    with pytest.raises(ValueError, match="tables must share one dim, got \\[4, 5\\]"):
        EmbeddingCollectionTwin(
            [EmbeddingConfig(num_embeddings=3, embedding_dim=k, name=f"t{k}") for k in (4, 5)], {}
        )
    kjt = _kjt("shared")
    variable = KeyedJaggedTensor(kjt.keys(), kjt.values(), kjt.weights_or_none(), kjt.lengths(),
                                 stride_per_key_per_rank=[[3], [3], [3]])  # fmt: skip
    with pytest.raises(ValueError, match="features must not have a variable batch size"):
        kjt_dynamic_shapes(variable)


def test_readme_torchrec_block_runs(tmp_path, monkeypatch):
    readme = Path(__file__).resolve().parents[1] / "README.md"
    section = readme.read_text().split("TorchRec's `EmbeddingBagCollection`", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(block, str(readme), "exec"), scope)
    model, served, program, kjt = (scope[k] for k in ("model", "served", "program", "kjt"))
    assert isinstance(model.sparse.embedding_bags["item"], RaggedEmbeddingBag)
    served.eval()
    with torch.no_grad():
        want = model(kjt)
        assert torch.equal(served(kjt), want)
        assert torch.equal(program.module()(kjt), want)
