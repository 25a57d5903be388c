"""Models: shapes, gradients, model-agnostic embedding layers, values, exact formulas,
parameter groups, config round trip and initialisation."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from mixemb.models import MODELS, build_model, make_embedding
from mixemb.models.fm import fm_pairwise

N, F, K = 50, 4, 6
NAMES = sorted(MODELS)
SMALL = {"hidden": [16, 8]}
OPTS = {"mf": {}, "fm": {}, "mlp": SMALL, "neumf": SMALL, "wide_deep": SMALL, "deepfm": SMALL}


class Scaled(nn.Module):
    """A custom embedding layer: a table whose output is scaled (not an nn.Embedding)."""

    def __init__(self, n: int, k: int, scale: float = 2.0):
        super().__init__()
        self.table = make_embedding(n, k)
        self.scale = scale

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table(ids) * self.scale


def _ids(b: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, N, (b, F), generator=torch.Generator().manual_seed(seed))


def _model(name: str, embedding=None, **kw) -> nn.Module:
    torch.manual_seed(0)
    return build_model(name, N, F, K, embedding=embedding, **{**OPTS[name], **kw})


def _randomise(model: nn.Module) -> None:
    """Non-zero first-order weights and bias so every term contributes."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.first_order_parameters():
            p.normal_()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("custom", [False, True])
def test_shape_and_gradients_reach_every_group(name, custom):
    emb = Scaled(N, K) if custom else None
    model = _model(name, emb)
    _randomise(model)
    out = model(_ids())
    assert out.shape == (8,) and out.dtype == torch.float32
    out.sum().backward()
    groups = {
        "embedding": model.embedding_parameters(),
        "first_order": model.first_order_parameters(),
        "dense": model.dense_parameters(),
    }
    for group, params in groups.items():
        for p in params:
            assert p.grad is not None and p.grad.abs().sum() > 0, (name, group, p.shape)
    if custom:
        assert model.embedding is emb and model.embedding_parameters() == [emb.table.weight]


@pytest.mark.parametrize("name", NAMES)
def test_custom_embedding_changes_output_as_expected(name):
    # Same table, scaled by 1 vs through nn.Embedding: identical; scaled by 2: different.
    plain = _model(name)
    same = _model(name, Scaled(N, K, scale=1.0))
    with torch.no_grad():
        same.embedding.table.weight.copy_(plain.embedding.weight)
        for a, b in zip(plain.dense_parameters(), same.dense_parameters(), strict=True):
            b.copy_(a)
    ids = _ids()
    assert torch.allclose(plain(ids), same(ids), atol=1e-6)
    same.embedding.scale = 2.0
    assert not torch.allclose(plain(ids), same(ids), atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("batch", [1, 0])
def test_tiny_batches(name, batch):
    model = _model(name)
    out = model(_ids(batch), torch.ones(batch, F))
    assert out.shape == (batch,)
    out.sum().backward()


@pytest.mark.parametrize("name", NAMES)
def test_values_multiply_embeddings_and_first_order(name):
    model = _model(name).eval()
    _randomise(model)
    ids = _ids()
    values = torch.rand(8, F) + 0.5
    assert torch.allclose(model(ids, torch.ones(8, F)), model(ids), atol=1e-6)

    class Ref(nn.Module):  # what "values multiply embeddings" means, done outside the model
        def __init__(self, inner):
            super().__init__()
            self.inner, self.values = inner, values

        def forward(self, i):
            return self.inner(i) * self.values[:, : i.shape[1], None]

    ref = build_model(name, N, F, K, embedding=Ref(model.embedding), **OPTS[name])
    ref.load_state_dict(model.state_dict(), strict=False)
    ref.eval()
    fo = model.first_order
    if fo is not None:  # reference first-order term: Σ w[id]·v, added back by hand
        with torch.no_grad():
            ref.first_order.weight.zero_()
        extra = (fo(ids).squeeze(-1) * values).sum(1)
    else:
        extra = 0
    assert torch.allclose(model(ids, values), ref(ids) + extra, atol=1e-5)
    assert not torch.allclose(model(ids, values), model(ids), atol=1e-4)


def test_mf_equals_manual_dot_plus_biases():
    model = _model("mf")
    _randomise(model)
    ids = _ids()
    e, b = model.embedding.weight, model.first_order.weight[:, 0]
    u, i = ids[:, 0], ids[:, 1]
    # extra fields (2, 3) contribute first-order terms only
    manual = model.bias + b[u] + b[i] + b[ids[:, 2]] + b[ids[:, 3]] + (e[u] * e[i]).sum(1)
    assert torch.allclose(model(ids), manual, atol=1e-6)


@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_fm_pairwise_equals_double_loop(reduce):
    model = _model("fm", pairwise_reduce=reduce)
    _randomise(model)
    ids = _ids()
    values = torch.rand(8, F)
    e = model.embedding(ids) * values[..., None]
    pair = torch.zeros(8)
    for f, g in itertools.combinations(range(F), 2):
        dot = e[:, f] * e[:, g]
        pair += dot.sum(1) if reduce == "sum" else dot.mean(1)
    first = (model.first_order(ids).squeeze(-1) * values).sum(1)
    assert torch.allclose(fm_pairwise(e, reduce), pair, atol=1e-5)
    assert torch.allclose(model(ids, values), model.bias + first + pair, atol=1e-5)


def test_deepfm_is_fm_plus_deep():
    fm, deep = _model("fm"), _model("deepfm")
    _randomise(fm)
    with torch.no_grad():
        deep.embedding.weight.copy_(fm.embedding.weight)
        deep.first_order.weight.copy_(fm.first_order.weight)
        deep.bias.copy_(fm.bias)
    ids = _ids()
    mlp = deep.out(deep.tower(deep.embedding(ids).flatten(1))).squeeze(-1)
    assert torch.allclose(deep(ids), fm(ids) + mlp, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_parameter_groups_partition_parameters(name):
    for emb in (None, Scaled(N, K)):
        model = _model(name, emb)
        groups = [model.embedding_parameters(), model.first_order_parameters()]
        groups.append(model.dense_parameters())
        ids = [id(p) for g in groups for p in g]
        assert len(ids) == len(set(ids))  # disjoint
        assert set(ids) == {id(p) for p in model.parameters()}  # and complete
        assert any(p is model.bias for p in model.first_order_parameters())
    has_dense = name not in ("mf", "fm")
    assert bool(model.dense_parameters()) == has_dense


@pytest.mark.parametrize("name", NAMES)
def test_config_round_trip(name):
    kw = {"dropout": 0.2} if name in ("mlp", "neumf", "wide_deep", "deepfm") else {}
    if name in ("fm", "deepfm"):
        kw["pairwise_reduce"] = "mean"
    model = _model(name, **kw).eval()
    _randomise(model)
    cfg = model.config
    assert cfg["name"] == name and cfg["embedding_dim"] == K
    assert (cfg["num_features"], cfg["num_fields"]) == (N, F)
    torch.manual_seed(123)  # other initial weights: everything must come from the state dict
    again = build_model(**{k: v for k, v in cfg.items() if k != "name"}, name=cfg["name"]).eval()
    assert again.config == cfg
    again.load_state_dict(model.state_dict())
    ids = _ids()
    assert torch.equal(model(ids), again(ids))
    assert f"num_fields={F}, embedding_dim={K}" in repr(model)
    if "pairwise_reduce" in kw:
        assert "pairwise_reduce='mean'" in repr(model)


def test_dropout_only_in_training():
    model = _model("mlp", dropout=0.5)
    ids = _ids()
    model.eval()
    assert torch.equal(model(ids), model(ids))
    model.train()
    torch.manual_seed(0)
    assert not torch.equal(model(ids), model(ids))


def test_default_hidden_and_first_order_zero_init():
    model = build_model("deepfm", N, F, K)
    assert model.config["hidden"] == [256, 128] and model.config["dropout"] == 0.0
    assert model.first_order.weight.abs().sum() == 0
    widths = [m.out_features for m in model.tower.modules() if isinstance(m, nn.Linear)]
    assert widths == [256, 128]


def test_xavier_normal_embedding_and_linear_init():
    torch.manual_seed(0)
    n, k = 20000, 32
    model = build_model("mlp", n, 2, k, hidden=[512])
    std = float(model.embedding.weight.detach().std())
    assert std == pytest.approx(math.sqrt(2 / (n + k)), rel=0.03)
    lin = model.tower.layers[0]
    assert float(lin.weight.detach().std()) == pytest.approx(math.sqrt(2 / (2 * k + 512)), rel=0.05)
    assert lin.bias.abs().sum() == 0


def test_errors():
    with pytest.raises(ValueError, match="deepfm.*fm.*mf.*mlp.*neumf.*wide_deep"):
        build_model("nope", N, F, K)
    for name in ("mf", "neumf"):
        with pytest.raises(ValueError, match="at least 2 fields"):
            build_model(name, N, 1, K)
    build_model("fm", N, 1, K)  # one field is a valid (if degenerate) FM
    with pytest.raises(ValueError, match="hidden"):
        build_model("mf", N, F, K, hidden=[8])
    with pytest.raises(ValueError, match="dropout"):
        build_model("mlp", N, F, K, dropout=1.0)
    with pytest.raises(ValueError, match="pairwise_reduce"):
        build_model("fm", N, F, K, pairwise_reduce="max")
    with pytest.raises(ValueError, match="embedding_dim"):
        build_model("fm", N, F, 0)
    with pytest.raises(ValueError, match=r"ids must be \(B, 4\)"):
        build_model("fm", N, F, K)(torch.zeros(3, 2, dtype=torch.long))


@pytest.mark.parametrize("name", ["mf", "fm", "mlp", "wide_deep", "deepfm", "neumf"])
def test_absorbing_a_rotation_keeps_the_outputs_on_the_rotated_table(name):
    torch.manual_seed(0)
    model = build_model(name, 50, 3, 8).double().eval()
    ids = torch.randint(0, 50, (16, 3))
    values = torch.rand(16, 3, dtype=torch.float64)
    v = torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64)).Q
    if not model.absorbs_rotation:
        with pytest.raises(ValueError, match="not exact"):
            model.absorb_rotation(v)
        return
    before = model(ids, values)
    with torch.no_grad():
        model.embedding.weight.copy_(model.embedding.weight @ v)
    assert not torch.allclose(model(ids, values), before) or name in ("mf", "fm")
    model.absorb_rotation(v)
    torch.testing.assert_close(model(ids, values), before)
