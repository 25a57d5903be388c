"""Progress bar: draws the live loss when enabled, stays silent in logs."""

import io

from mixemb.train.progress import Progress


def test_progress_draws_count_and_loss_when_enabled():
    buf = io.StringIO()
    with Progress(3, "epoch 1/2", enabled=True, stream=buf, min_interval=0.0) as bar:
        for i in range(3):
            bar.update(1, loss=1.0 / (i + 1))
    text = buf.getvalue()
    assert "epoch 1/2" in text and "3/3" in text and "loss=0.3333" in text
    assert text.endswith("\n")


def test_progress_silent_when_not_a_terminal():
    buf = io.StringIO()  # isatty() is False
    with Progress(5, "x", stream=buf) as bar:
        bar.update(5, loss=0.5)
    assert buf.getvalue() == ""
