"""DNIS search: drives α of an uninformative block toward 0, resumes exactly, validates config."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from mixemb.data.schema import Dataset, FieldSpec, Split
from mixemb.models import build_model
from mixemb.nn import SoftSelectEmbedding
from mixemb.search import SearchConfig, search


def _planted(n=6000, users=60, items=40, noise=200, seed=0):
    """Rating = 3 + <p_u, q_i> + noise; a third field is pure noise. Ids: users, items
    (block 0), then the noise field's values (block 1)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randint(0, users, (n,), generator=g)
    i = torch.randint(0, items, (n,), generator=g)
    z = torch.randint(0, noise, (n,), generator=g)
    pu, qi = torch.randn(users, 3, generator=g), torch.randn(items, 3, generator=g)
    y = 3 + (pu[u] * qi[i]).sum(1) + 0.3 * torch.randn(n, generator=g)
    ids = torch.stack([u, users + i, users + items + z], 1).int()
    enc = SimpleNamespace(
        num_features=users + items + noise, fields=[FieldSpec(f) for f in ("u", "i", "z")]
    )
    a, b = int(0.7 * n), int(0.9 * n)
    splits = [Split(ids[s], y[s]) for s in (slice(0, a), slice(a, b), slice(b, n))]
    return Dataset("planted", "rating", enc, *splits), users + items


def _model(ds, cut, **emb_kw):
    torch.manual_seed(0)
    emb = SoftSelectEmbedding(ds.num_features, 8, [0, cut, ds.num_features], l1=1e-5, **emb_kw)
    return build_model("fm", ds.num_features, 3, 8, embedding=emb)


CFG = dict(dim=8, num_blocks=2, warmup_epochs=5, batch_size=128, lr=1e-2, alpha_lr=1e-2)


def test_search_prunes_the_uninformative_block():
    ds, cut = _planted()
    model = _model(ds, cut)
    result = search(model, ds, SearchConfig(search_epochs=8, patience=10, **CFG), log=lambda s: 0)
    alpha = model.embedding.alpha.detach()
    assert alpha.min() >= 0 and alpha.max() <= 1  # clamped
    assert alpha[1].mean() < 0.2, alpha  # the noise field's block is switched off
    assert alpha[0].mean() > 0.8, alpha  # the informative block stays on
    assert result.valid["mse"] < 0.2  # and the model predicts well


def test_search_without_normalization_runs_as_ablation():
    ds, cut = _planted(n=2000)
    model = _model(ds, cut, normalize=False)
    cfg = SearchConfig(search_epochs=1, normalize=False, **{**CFG, "warmup_epochs": 1})
    search(model, ds, cfg, log=lambda s: 0)
    assert torch.isfinite(model.embedding.alpha).all()


def test_resume_after_kill_equals_uninterrupted(tmp_path):
    ds, cut = _planted(n=2000)
    cfg = SearchConfig(search_epochs=4, patience=10, **{**CFG, "warmup_epochs": 2})
    full = _model(ds, cut)
    ref = search(full, ds, cfg, run_dir=tmp_path / "a", log=lambda s: 0)

    class Kill(Exception):
        pass

    def killer(line: str) -> None:
        if line.startswith("search   3"):
            raise Kill

    with pytest.raises(Kill):
        search(_model(ds, cut), ds, cfg, run_dir=tmp_path / "b", log=killer)
    resumed = _model(ds, cut)
    out = search(resumed, ds, cfg, run_dir=tmp_path / "b", resume=True, log=lambda s: 0)
    for key, value in full.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    assert out.valid == ref.valid and out.best_epoch == ref.best_epoch


def test_dense_layers_frozen_by_default():
    ds, cut = _planted(n=1000)
    torch.manual_seed(0)
    emb = SoftSelectEmbedding(ds.num_features, 8, [0, cut, ds.num_features])
    model = build_model("deepfm", ds.num_features, 3, 8, embedding=emb, hidden=[16])
    before = [p.detach().clone() for p in model.dense_parameters()]
    cfg = SearchConfig(search_epochs=1, **{**CFG, "warmup_epochs": 0})
    search(model, ds, cfg, log=lambda s: 0)
    assert all(torch.equal(a, b) for a, b in zip(before, model.dense_parameters()))
    assert not torch.equal(emb.alpha.detach(), torch.ones_like(emb.alpha))


def test_search_needs_soft_select_embedding():
    ds, _ = _planted(n=300)
    model = build_model("fm", ds.num_features, 3, 8)
    with pytest.raises(TypeError, match="SoftSelectEmbedding"):
        search(model, ds, SearchConfig(**CFG), log=lambda s: 0)


@pytest.mark.parametrize("bad", [dict(alpha_lr=0), dict(num_blocks=0), dict(search_epochs=-1)])
def test_bad_search_config(bad):
    with pytest.raises(ValueError):
        SearchConfig(**bad)


def test_search_on_a_warm_started_model_keeps_its_bias():
    ds, cut = _planted(n=1000)
    model = _model(ds, cut)
    with torch.no_grad():
        model.bias.fill_(-7.0)  # as if warm-started elsewhere
    cfg = SearchConfig(search_epochs=1, **{**CFG, "warmup_epochs": 0, "lr": 1e-9})
    search(model, ds, cfg, log=lambda s: 0, init_bias=False)
    assert abs(float(model.bias.detach()) + 7.0) < 1e-3
