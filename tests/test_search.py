"""DNIS search: drives α of an uninformative block toward 0, resumes exactly, validates config."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from mixemb.data.schema import Dataset, FieldSpec, Split
from mixemb.models import build_model
from mixemb.nn import SoftSelectEmbedding
from mixemb.search import SearchConfig, search
from mixemb.search.any_model import dnis
from mixemb.train import CheckpointError, TrainConfig, atomic_save, load_checkpoint


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
        num_features=users + items + noise,
        fields=[FieldSpec(f) for f in ("u", "i", "z")],
        id_order="frequency",
    )
    a, b = int(0.7 * n), int(0.9 * n)
    splits = [Split(ids[s], y[s]) for s in (slice(0, a), slice(a, b), slice(b, n))]
    return Dataset("planted", "rating", enc, *splits), users + items


def _model(ds, cut, **emb_kw):
    torch.manual_seed(0)
    emb = SoftSelectEmbedding(ds.num_features, 8, [0, cut, ds.num_features], l1=1e-5, **emb_kw)
    return build_model("fm", ds.num_features, 3, 8, embedding=emb)


CFG = dict(dim=8, num_blocks=2, warmup_epochs=5, batch_size=128, lr=1e-2, alpha_lr=1e-2)


def _kill_at(prefix: str):
    class Kill(Exception):
        pass

    def log(line: str) -> None:
        if line.startswith(prefix):
            raise Kill

    return Kill, log


def _rows(history):
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


def _assert_resume_equals(ds, cut, cfg, run_dir, kill_prefix: str, full, ref) -> None:
    """A search killed at the log line ``kill_prefix`` and resumed in ``run_dir`` ends as
    the uninterrupted one (``full`` model, ``ref`` result) did."""
    kill, killer = _kill_at(kill_prefix)
    with pytest.raises(kill):
        search(_model(ds, cut), ds, cfg, run_dir=run_dir, log=killer)
    resumed = _model(ds, cut)
    out = search(resumed, ds, cfg, run_dir=run_dir, resume=True, log=lambda s: 0)
    for key, value in full.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    assert _rows(out.history) == _rows(ref.history)
    assert out.valid == ref.valid and out.best_epoch == ref.best_epoch


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
    _assert_resume_equals(ds, cut, cfg, tmp_path / "b", "search   3", full, ref)


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


def test_dnis_searches_a_mixemb_model_on_its_frequency_blocks():
    """mixemb.dnis takes mixemb's own model as it is: its SoftSelectEmbedding is a twin
    whose boundaries are its blocks (no counting pass), and the noise block fades."""
    ds, cut = _planted()
    model = _model(ds, cut)

    def batches(split):
        ids, labels = split.ids.long(), split.labels
        return [((ids[i : i + 128], None), labels[i : i + 128]) for i in range(0, len(ids), 128)]

    lines: list[str] = []
    dnis(model, batches(ds.train), batches(ds.valid), torch.nn.MSELoss(), epochs=8,
         warmup_epochs=5, lr=1e-2, alpha_lr=1e-2, patience=10, log=lines.append)  # fmt: skip
    assert not any("counted" in line for line in lines)
    alpha = model.embedding.alpha.detach()
    assert alpha[1].mean() < 0.6 < 0.9 < alpha[0].mean(), alpha  # from 1: noise fades


def test_search_needs_soft_select_embedding():
    ds, _ = _planted(n=300)
    model = build_model("fm", ds.num_features, 3, 8)
    with pytest.raises(TypeError, match="SoftSelectEmbedding"):
        search(model, ds, SearchConfig(**CFG), log=lambda s: 0)


@pytest.mark.parametrize(
    "bad",
    [
        dict(alpha_lr=0),
        dict(num_blocks=0),
        dict(search_epochs=-1),
        dict(alpha_lr=float("nan")),
        dict(lr=float("inf")),
        dict(l1=float("inf")),
        dict(l1=-1.0),
        dict(eps=float("nan")),
        dict(alpha_split=1.0),
        dict(alpha_split=-0.1),
        dict(alpha_split=float("nan")),
    ],
)
def test_bad_search_config(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        SearchConfig(**bad)


def test_search_on_a_warm_started_model_keeps_its_bias():
    ds, cut = _planted(n=1000)
    model = _model(ds, cut)
    with torch.no_grad():
        model.bias.fill_(-7.0)  # as if warm-started elsewhere
    cfg = SearchConfig(search_epochs=1, **{**CFG, "warmup_epochs": 0, "lr": 1e-9})
    search(model, ds, cfg, log=lambda s: 0, init_bias=False)
    assert abs(float(model.bias.detach()) + 7.0) < 1e-3


def test_resume_after_lr_plateau_and_early_stop_equals_uninterrupted(tmp_path):
    ds, cut = _planted(n=2000)
    # A large weights lr makes validation worsen: α's lr is halved, then the search stops.
    cfg = SearchConfig(
        search_epochs=10, patience=2, **{**CFG, "warmup_epochs": 1, "lr": 0.3, "alpha_lr": 0.5}
    )
    full = _model(ds, cut)
    ref = search(full, ds, cfg, run_dir=tmp_path / "a", log=lambda s: 0)
    lrs = [h["alpha_lr"] for h in ref.history]
    assert len(ref.history) < cfg.search_epochs and lrs[-1] < lrs[0]
    cut_at = next(i for i, lr in enumerate(lrs) if lr < lrs[0]) + 2  # after the halving
    _assert_resume_equals(ds, cut, cfg, tmp_path / "b", f"search {cut_at:3d}", full, ref)


def _resume_from_edited_checkpoint(tmp_path, cfg, edit, n=1000) -> None:
    """A search killed in epoch 2 whose search_last.pt ``edit(state)`` rewrites (as an older
    version wrote it) resumes to the uninterrupted search's history and best epoch."""
    ds, cut = _planted(n=n)
    ref = search(_model(ds, cut), ds, cfg, run_dir=tmp_path / "a", log=lambda s: 0)
    kill, killer = _kill_at("search   2")
    with pytest.raises(kill):
        search(_model(ds, cut), ds, cfg, run_dir=tmp_path / "b", log=killer)
    path = tmp_path / "b" / "search_last.pt"
    state = load_checkpoint(path, kind="mixemb.search")
    edit(state)
    atomic_save(state, path)
    out = search(_model(ds, cut), ds, cfg, run_dir=tmp_path / "b", resume=True, log=lambda s: 0)
    assert _rows(out.history) == _rows(ref.history) and out.best_epoch == ref.best_epoch


def test_resume_reads_a_checkpoint_counting_patience_in_bad(tmp_path):
    """search_last.pt may hold the patience count as "bad" and best_epoch counted from 1."""

    def older(state):
        state["bad"] = state.pop("bad_epochs")
        state["best_epoch"] += 1

    cfg = SearchConfig(search_epochs=3, patience=10, **{**CFG, "warmup_epochs": 1})
    _resume_from_edited_checkpoint(tmp_path, cfg, older)


def test_resume_with_other_search_config_is_refused(tmp_path):
    ds, cut = _planted(n=600)
    cfg = SearchConfig(search_epochs=1, **{**CFG, "warmup_epochs": 0})
    search(_model(ds, cut), ds, cfg, run_dir=tmp_path, log=lambda s: 0)
    other = SearchConfig(search_epochs=1, **{**CFG, "warmup_epochs": 0, "alpha_lr": 0.5})
    with pytest.raises(CheckpointError, match="different configuration.*alpha_lr"):
        search(_model(ds, cut), ds, other, run_dir=tmp_path, resume=True, log=lambda s: 0)


def test_warm_start_config_shares_the_search_settings():
    cfg = SearchConfig(warmup_epochs=0, batch_size=7, lr=0.3, patience=4, seed=5, k=3)
    assert cfg.warmup_config() == TrainConfig(
        epochs=1, batch_size=7, lr=0.3, patience=4, seed=5, k=3
    )


def test_alpha_steps_on_held_out_training_rows_leave_validation_unseen(monkeypatch):
    """alpha_split: α's batches come from training rows held out of the table's training
    (warm start included); validation rows (marked by label 100) only score."""
    import mixemb.search.on_dataset as on_dataset

    ds, cut = _planted(n=1200)
    valid = Split(ds.valid.ids, torch.full_like(ds.valid.labels, 100.0))
    ds = Dataset(ds.name, ds.task, ds.encoder, ds.train, valid, ds.test)
    alpha_labels, warm_rows = [], []
    real_step, real_fit = on_dataset.DnisStep.step, on_dataset.fit

    def step(self, batch, alpha_batch):
        alpha_labels.append(alpha_batch[1])
        return real_step(self, batch, alpha_batch)

    def fit(model, dataset, *args, **kw):
        warm_rows.append(len(dataset.train))
        return real_fit(model, dataset, *args, **kw)

    monkeypatch.setattr(on_dataset.DnisStep, "step", step)
    monkeypatch.setattr(on_dataset, "fit", fit)
    held, rest = ds.hold_out(0.25, seed=0)[::-1]
    cfg = SearchConfig(search_epochs=1, alpha_split=0.25, **{**CFG, "warmup_epochs": 1})
    search(_model(ds, cut), ds, cfg, log=lambda s: 0)
    seen = torch.cat(alpha_labels)
    assert warm_rows == [len(rest.train)] and len(rest.train) + len(held) == len(ds.train)
    assert not (seen == 100).any() and set(seen.tolist()) <= set(held.labels.tolist())
    alpha_labels.clear()
    search(_model(ds, cut), ds, SearchConfig(search_epochs=1, **CFG), log=lambda s: 0)
    assert (torch.cat(alpha_labels) == 100).all()  # the paper's protocol: validation


def test_a_checkpoint_saved_before_a_setting_existed_resumes_with_its_default(tmp_path):
    cfg = SearchConfig(search_epochs=2, patience=5, **{**CFG, "warmup_epochs": 0})
    _resume_from_edited_checkpoint(tmp_path, cfg, lambda state: state["config"].pop("alpha_split"))
