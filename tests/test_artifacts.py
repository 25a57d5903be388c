"""Artifacts: every saved model kind reloads, scores its split as when saved, scores raw rows."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mixemb.artifacts import evaluate_run, load_model, load_run, score_raw
from mixemb.data import load_dataset
from mixemb.search import SearchConfig
from mixemb.search.run import search_run
from mixemb.train import TrainConfig, predict
from mixemb.train.checkpoint import CheckpointError
from mixemb.train.run import train_run

SPEC = {"name": "synthetic", "task": "rating", "seed": 0, "min_count": 1}


def _quiet(line: str) -> None:
    pass


@pytest.fixture(scope="module")
def train_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    train_run(SPEC, "mf", 4, TrainConfig(epochs=1), out, log=_quiet)
    return out


def test_train_run_reloads_and_scores_as_trained(train_dir):
    result = json.loads((train_dir / "result.json").read_text())
    assert evaluate_run(train_dir, "test") == result["test"]
    assert evaluate_run(train_dir / "best.pt", "valid") == result["valid"]
    with pytest.raises(ValueError, match="split"):
        evaluate_run(train_dir, "holdout")


def test_search_run_reloads_and_scores_as_searched(tmp_path):
    cfg = SearchConfig(dim=4, num_blocks=2, warmup_epochs=1, search_epochs=1)
    _, summary = search_run(SPEC, "mf", cfg, tmp_path, log=_quiet)
    model, obj, k = load_model(tmp_path)
    assert obj["kind"] == "mixemb.searched" and k == cfg.k
    assert evaluate_run(tmp_path, "valid") == summary["valid"]
    with pytest.raises(CheckpointError, match="'mixemb.model'"):
        load_run(tmp_path / "searched.pt")


def test_saved_models_score_raw_rows_with_their_encoder(train_dir):
    ds = load_dataset("synthetic", "rating")
    enc = ds.encoder
    rows = ds.test.ids[:20].tolist()
    raw = {
        "user_id": np.array([enc.decode(u)[1] for u, _ in rows]),
        "item_id": np.array([enc.decode(i)[1] for _, i in rows]),
    }
    model, _ = load_run(train_dir)
    expected = predict(model, type(ds.test)(ds.test.ids[:20], ds.test.labels[:20]))
    torch.testing.assert_close(score_raw(train_dir, raw), expected)
    unseen = score_raw(
        train_dir, {"user_id": np.array(["never-seen"]), "item_id": raw["item_id"][:1]}
    )
    assert unseen.shape == (1,) and torch.isfinite(unseen).all()
