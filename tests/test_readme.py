"""The README's "Use it in your own model" block runs as written, and does what it says."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def _own_model_block() -> str:
    section = README.read_text().split("## Use it in your own model", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_own_model_block_runs_and_round_trips(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(_own_model_block(), str(README), "exec"), scope)
    model, served, report = scope["model"], scope["served"], scope["report"]
    import mixemb

    assert isinstance(served.user, mixemb.RaggedEmbedding)
    assert isinstance(served.history, mixemb.RaggedEmbeddingBag)
    assert report.stored_bytes <= 0.2 * report.dense_bytes
    served.eval(), model.eval()
    (users, items, offsets), _ = scope["valid"][0]
    with torch.no_grad():
        assert torch.equal(served(users, items, offsets), model(users, items, offsets))
    assert "user" in capsys.readouterr().out  # the report's table was printed
