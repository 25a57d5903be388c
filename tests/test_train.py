"""Trainer: it learns, stops early, checkpoints atomically, resumes to the uninterrupted run."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from types import SimpleNamespace

import pytest
import torch

from mixemb.data.schema import Dataset, FieldSpec, Split
from mixemb.models import build_model
from mixemb.train import (
    CheckpointError,
    EpochHooks,
    TrainConfig,
    atomic_save,
    batch_order,
    config_from,
    evaluate,
    fit,
    load_checkpoint,
    run_epochs,
)


def _planted_dataset(task: str = "rating", n: int = 1200, users: int = 40, items: int = 30):
    """Two fields (user, item) with a planted rank-2 signal; ids in one shared space."""
    gen = torch.Generator().manual_seed(0)
    u = torch.randint(0, users, (n,), generator=gen)
    i = torch.randint(0, items, (n,), generator=gen)
    pu, qi = torch.randn(users, 2, generator=gen), torch.randn(items, 2, generator=gen)
    signal = (pu[u] * qi[i]).sum(1)
    if task == "rating":
        labels = 3.0 + signal + 0.1 * torch.randn(n, generator=gen)
    else:
        labels = (torch.rand(n, generator=gen) < torch.sigmoid(2 * signal)).float()
    ids = torch.stack([u, users + i], 1).to(torch.int32)
    encoder = SimpleNamespace(
        num_features=users + items,
        fields=[FieldSpec("user_id"), FieldSpec("item_id")],
        id_order="frequency",
    )
    a, b = int(0.7 * n), int(0.9 * n)
    parts = [Split(ids[s], labels[s]) for s in (slice(0, a), slice(a, b), slice(b, n))]
    return Dataset("planted", task, encoder, *parts)


class Kill(Exception):
    """Raised by :func:`kill_at`'s logger: a kill at a known point of a run."""


def kill_at(prefix: str):
    """A log function that raises Kill at the first line starting with ``prefix``."""

    def log(line: str) -> None:
        if line.startswith(prefix):
            raise Kill

    return log


def _model(name: str, ds: Dataset, **kw):
    torch.manual_seed(0)
    return build_model(name, ds.num_features, ds.num_fields, 8, **kw)


def test_batch_order_is_a_seeded_permutation():
    idx = torch.cat(list(batch_order(103, 10, seed=1, epoch=2)))
    assert sorted(idx.tolist()) == list(range(103))
    again = torch.cat(list(batch_order(103, 10, seed=1, epoch=2)))
    other = torch.cat(list(batch_order(103, 10, seed=1, epoch=3)))
    assert torch.equal(idx, again) and not torch.equal(idx, other)


def test_fit_learns_planted_signal_and_reports_test():
    ds = _planted_dataset("rating")
    model = _model("mf", ds)
    var = float(ds.test.labels.var())
    result = fit(
        model, ds, TrainConfig(epochs=40, batch_size=64, lr=0.02, patience=5), log=lambda s: None
    )
    assert result.test["mse"] < 0.5 * var, (result.test, var)
    assert result.valid["mse"] == pytest.approx(min(h["valid_mse"] for h in result.history))
    assert 1 <= result.best_epoch <= len(result.history)


def test_fit_ctr_auc_above_chance():
    ds = _planted_dataset("ctr", n=3000)
    result = fit(
        _model("fm", ds), ds, TrainConfig(epochs=15, batch_size=128, lr=0.01), log=lambda s: None
    )
    assert result.test["auc"] > 0.7


def test_early_stopping_stops_after_patience():
    ds = _planted_dataset("rating")
    # A huge learning rate makes validation loss blow up: it must stop after patience + 1 epochs.
    cfg = TrainConfig(epochs=30, batch_size=64, lr=5.0, patience=2)
    result = fit(_model("mf", ds), ds, cfg, log=lambda s: None)
    assert result.stopped_early
    assert len(result.history) == result.best_epoch + cfg.patience + 1


def test_bias_starts_at_training_mean():
    ds = _planted_dataset("rating")
    model = _model("mf", ds)
    fit(model, ds, TrainConfig(epochs=1, lr=1e-12), log=lambda s: None)
    assert float(model.bias.detach()) == pytest.approx(float(ds.train.labels.mean()), abs=1e-4)


@pytest.mark.parametrize("name,kw", [("mf", {}), ("mlp", {"dropout": 0.3})])
def test_resume_after_kill_equals_uninterrupted_run(tmp_path, name, kw):
    ds = _planted_dataset("rating")
    cfg = TrainConfig(epochs=5, batch_size=100, lr=0.01, patience=10, seed=3)
    full = _model(name, ds, **kw)
    ref = fit(full, ds, cfg, run_dir=tmp_path / "full", log=lambda s: None)

    with pytest.raises(Kill):
        fit(_model(name, ds, **kw), ds, cfg, run_dir=tmp_path / "cut", log=kill_at("epoch   3"))
    # an epoch is logged once its checkpoint is written: killed at epoch 3's line, 1-3 are saved
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["epoch"] == 2

    resumed = _model(name, ds, **kw)  # fresh weights: everything must come from the checkpoint
    out = fit(resumed, ds, cfg, run_dir=tmp_path / "cut", resume=True, log=lambda s: None)
    for key, value in full.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in ref.history]
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in out.history] == strip
    assert out.test == ref.test


def test_resume_with_other_config_is_refused(tmp_path):
    ds = _planted_dataset("rating")
    fit(_model("mf", ds), ds, TrainConfig(epochs=1), run_dir=tmp_path, log=lambda s: None)
    with pytest.raises(CheckpointError, match="different configuration"):
        fit(_model("mf", ds), ds, TrainConfig(epochs=1, lr=0.5), run_dir=tmp_path, resume=True)


def test_checkpoints_are_atomic_and_damage_is_reported(tmp_path):
    path = atomic_save({"kind": "x", "w": torch.arange(1000.0)}, tmp_path / "c.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temp file left behind
    assert torch.equal(load_checkpoint(path, kind="x")["w"], torch.arange(1000.0))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_checkpoint(path)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=str(path.name)):
        load_checkpoint(path)
    atomic_save({"kind": "y"}, path)
    with pytest.raises(CheckpointError, match="expected a 'x' checkpoint"):
        load_checkpoint(path, kind="x")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


def test_failed_save_keeps_previous_file(tmp_path):
    path = atomic_save({"kind": "x", "v": 1}, tmp_path / "c.pt")

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_save({"kind": "x", "v": Unpicklable()}, path)
    assert load_checkpoint(path)["v"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_evaluate_topk_groups():
    # One group per "user": the positive first. A model scoring by item id ranks item 0 first.
    ids = torch.tensor([[0, 2], [0, 3], [1, 3], [1, 2]], dtype=torch.int32)
    split = Split(ids, torch.tensor([1.0, 0.0, 1.0, 0.0]), group_size=2)

    class ByItem(torch.nn.Module):
        def forward(self, ids, values=None):
            return -ids[:, 1].float()

    m = evaluate(ByItem(), split, "topk", k=1)
    # group 1: positive item 2 beats item 3 -> hit; group 2: positive item 3 loses to 2 -> miss.
    assert m["hr@1"] == pytest.approx(0.5)
    assert m["ndcg@1"] == pytest.approx(0.5 * 1 / math.log2(2))


def test_config_validation():
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(lr=0)


def test_config_from_takes_shared_fields_by_name():
    @dataclass
    class Stage:  # another stage's config: some fields shared with TrainConfig
        batch_size: int = 7
        lr: float = 0.3
        seed: int = 5
        alpha_lr: float = 1.0

    cfg = config_from(TrainConfig, Stage(), epochs=2)
    assert cfg == TrainConfig(epochs=2, batch_size=7, lr=0.3, seed=5)
    assert config_from(TrainConfig, asdict(cfg)) == cfg  # a saved config reads back
    with pytest.raises(TypeError, match="no field"):
        config_from(TrainConfig, cfg, alpha_lr=1.0)
    with pytest.raises(TypeError, match="dataclass or a mapping"):
        config_from(TrainConfig, 3)


def test_epoch_loop_calls_hooks_in_order_and_builds_rows(tmp_path):
    ds = _planted_dataset("rating", n=300)
    model = _model("mf", ds)
    cfg = TrainConfig(epochs=2, batch_size=100, patience=5)
    calls: list[str] = []

    class Hooks(EpochHooks):
        def begin_epoch(self, epoch):
            calls.append(f"begin {epoch}")

        def step(self, train, index):
            calls.append("step")
            return {}

        def end_epoch(self, steps):
            calls.append(f"end {steps}")
            return {"train_x": 1.0}

        def after_validation(self, value):
            calls.append("validated")
            return {"extra": [0.5, 0.25]}

        def state_dict(self):
            return {"hook_state": len(calls)}

    lines: list[str] = []
    result = run_epochs(
        model,
        ds,
        cfg,
        Hooks(),
        epochs=2,
        label="toy",
        kind="t",
        last_path=tmp_path / "l.pt",
        log=lines.append,
    )
    one_epoch = ["step"] * 3 + ["end 3", "validated"]
    assert calls == ["begin 0", *one_epoch, "begin 1", *one_epoch]
    assert list(result.history[0]) == [
        "epoch",
        "train_x",
        "valid_mse",
        "valid_rmse",
        "extra",
        "seconds",
    ]
    assert (
        lines[0].startswith("toy   1  train_x 1.0000  valid_mse") and "extra 0.50 0.25" in lines[0]
    )
    saved = load_checkpoint(tmp_path / "l.pt", kind="t")
    assert (
        saved["hook_state"] == len(calls) and saved["epoch"] == 1 and saved["bad_epochs"] in (0, 1)
    )


@pytest.mark.parametrize(
    "bad", [dict(lr=math.inf), dict(lr=math.nan), dict(weight_decay=math.nan), dict(lr=0.0)]
)
def test_non_finite_settings_are_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        TrainConfig(**bad)


def test_diverged_training_stops_and_saves_nothing(tmp_path):
    from mixemb.train.loop import TrainingDiverged

    ds = _planted_dataset("rating")
    with pytest.raises(TrainingDiverged, match=r"epoch 1: .* is (nan|inf); training diverged"):
        fit(
            _model("mf", ds),
            ds,
            TrainConfig(epochs=3, lr=1e30),
            run_dir=tmp_path,
            log=lambda s: None,
        )
    assert [p.name for p in tmp_path.iterdir()] == []


def test_resume_without_a_checkpoint_starts_fresh(tmp_path):
    ds = _planted_dataset("rating")
    cfg = TrainConfig(epochs=2, batch_size=100, seed=1)
    ref = fit(_model("mf", ds), ds, cfg, log=lambda s: None)
    lines: list[str] = []
    out = fit(_model("mf", ds), ds, cfg, run_dir=tmp_path, resume=True, log=lines.append)
    assert out.test == ref.test and any("starting fresh" in line for line in lines)


def test_resume_log_counts_the_saved_epochs(tmp_path):
    ds = _planted_dataset("rating")
    cfg = TrainConfig(epochs=4, batch_size=100, patience=10)
    with pytest.raises(Kill):
        fit(_model("mf", ds), ds, cfg, run_dir=tmp_path, log=kill_at("epoch   2"))
    lines: list[str] = []
    fit(_model("mf", ds), ds, cfg, run_dir=tmp_path, resume=True, log=lines.append)
    assert "2 epoch(s) done, continuing with epoch 3" in lines[0]
    assert lines[1].startswith("epoch   3")


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_checkpoints_get_the_umask_mode(tmp_path, umask, mode):
    import os

    old = os.umask(umask)
    try:
        path = atomic_save({"kind": "x"}, tmp_path / "c.pt")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == mode


def test_a_refused_pickle_is_not_called_corrupted(tmp_path):
    import os

    class Payload:
        def __reduce__(self):
            return (os.getcwd, ())

    torch.save({"kind": "x", "p": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="not a mixemb file") as exc:
        load_checkpoint(tmp_path / "evil.pt")
    assert "weights_only" not in str(exc.value) and "corrupted" not in str(exc.value)


def test_saved_model_config_must_describe_the_weights():
    from mixemb.train.saved import check_model_config

    model = build_model("deepfm", 30, 2, 4, hidden=[8])
    state, shape = model.state_dict(), (30, 4)
    assert check_model_config("f", model.config, state, shape) == model.config
    cases = [
        ({**model.config, "num_features": 10**15}, state, "embedding table"),
        ({**model.config, "hidden": [10**12]}, state, "do not fit"),
        ({**model.config, "num_fields": "2"}, state, "bad model config"),
        ({**model.config, "name": "nope"}, state, "bad model config"),
        ([1, 2], state, "not a mixemb model config"),
        (model.config, {**state, "extra": torch.zeros(1)}, "extra"),
    ]
    for config, weights, match in cases:
        with pytest.raises(CheckpointError, match=match):
            check_model_config("f", config, weights, shape)


def test_saved_dataset_spec_opens_no_stored_path(tmp_path):
    from mixemb.train.saved import saved_dataset_spec

    spec = {"name": "synthetic", "task": "rating", "seed": 0}
    assert saved_dataset_spec("f", spec) == spec
    mine = {"name": "r.dat", "path": "/etc/passwd", "fmt": "movielens", "task": "rating"}
    with pytest.raises(CheckpointError, match="--data-file"):
        saved_dataset_spec("f", mine)
    given = saved_dataset_spec("f", mine, tmp_path / "r.dat")
    assert given["path"] == str((tmp_path / "r.dat").resolve())
    for bad in ({"name": "/etc/passwd"}, {**spec, "open": "x"}, "spec"):
        with pytest.raises(CheckpointError):
            saved_dataset_spec("f", bad)
    with pytest.raises(ValueError, match="registry dataset"):
        saved_dataset_spec("f", spec, tmp_path / "r.dat")
