"""Bad input through the real ``mixemb`` command: one line on stderr, exit 2, nothing deleted,
nothing saved from a diverged run, nothing opened that a model file names (issue #32).

Every case runs the installed entry point in a subprocess, so a traceback, a signal or a
second stderr line is seen as the user would see it.
"""

from __future__ import annotations

import os
import resource
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mixemb.prune.run import prune_run
from mixemb.search import SearchConfig
from mixemb.search.run import search_run

SPEC = {"name": "synthetic", "task": "rating", "seed": 0, "min_count": 1}
TINY = ["--data", "synthetic", "--model", "mf", "--dim", "4"]


def _mixemb() -> list[str]:
    script = Path(sys.executable).parent / "mixemb"
    return [str(script)] if script.exists() else [sys.executable, "-m", "mixemb"]


def run_cli(*args, preexec=None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [*_mixemb(), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        preexec_fn=preexec,
        timeout=timeout,
    )


def one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """The single stderr line of a failed command, checked to contain every needle."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mixemb: error: "), proc.stderr[-2000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def pruned_file(tmp_path_factory) -> Path:
    """A pruned MF model file (synthetic data, K=4, 2 blocks, 50 % of the entries)."""
    run = tmp_path_factory.mktemp("dnis")
    cfg = SearchConfig(dim=4, num_blocks=2, warmup_epochs=1, search_epochs=1)
    search_run(SPEC, "mf", cfg, run, log=lambda s: None)
    prune_run(run, run / "pruned.pt", ratio=0.5, log=lambda s: None)
    return run / "pruned.pt"


def _tampered(src: Path, dst: Path, edit) -> Path:
    obj = torch.load(src, weights_only=True)
    edit(obj)
    torch.save(obj, dst)
    return dst


# ---- item 1: the demo never deletes a folder it did not make -----------------------------
def test_demo_refuses_a_foreign_folder_and_a_file(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    one_line_error(run_cli("demo", "--data", "synthetic", "--out", mine), "did not make")
    assert (mine / "thesis.tex").read_text() == "years of work"
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep")
    one_line_error(run_cli("demo", "--out", a_file), "not a folder")
    assert a_file.read_text() == "keep"


def test_demo_replaces_only_its_own_marked_folder(tmp_path):
    from mixemb.demo import MARKER, prepare_out

    out = prepare_out(tmp_path / "demo")
    assert sorted(p.name for p in out.iterdir()) == [MARKER]
    (out / "old-run.txt").write_text("from the previous demo")
    assert sorted(p.name for p in prepare_out(out).iterdir()) == [MARKER]  # replaced
    (out / MARKER).unlink()
    (out / "old-run.txt").write_text("no longer marked")
    with pytest.raises(ValueError, match="did not make"):
        prepare_out(out)
    assert (out / "old-run.txt").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert prepare_out(empty) == empty and (empty / MARKER).is_file()


# ---- item 2: a model file's metadata cannot bypass the table checks or open files --------
@pytest.mark.parametrize(
    "what,edit,needle",
    [
        (
            "dense weights onto the table",
            lambda o: o["state"].update({"embedding.group_offsets": torch.tensor([2**40])}),
            "would overwrite the ragged table",
        ),
        (
            "a huge num_features",
            lambda o: o["model_config"].update(num_features=10**15),
            "model config",
        ),
        (
            "a non-int num_fields",
            lambda o: o["model_config"].update(num_fields="2"),
            "bad model config",
        ),
        ("an encoder without frequencies", lambda o: o["encoder"].clear(), "encoder"),
        (
            "a dataset path in the file",
            lambda o: o["dataset_spec"].update(path="/etc/passwd", fmt="movielens"),
            "--data-file",
        ),
        (
            "a dataset name outside the registry",
            lambda o: o["dataset_spec"].update(name="/etc/passwd"),
            "not a registry dataset",
        ),
    ],
)
def test_evaluate_refuses_tampered_pruned_files(pruned_file, tmp_path, what, edit, needle):
    bad = _tampered(pruned_file, tmp_path / "bad.pt", edit)
    line = one_line_error(run_cli("evaluate", bad), needle)
    assert "root:" not in line  # no line of a file the model file named


def test_best_pt_with_a_huge_config_is_one_line(tmp_path):
    run = tmp_path / "run"
    assert run_cli("train", *TINY, "--epochs", "1", "--out", run).returncode == 0
    _tampered(
        run / "best.pt", run / "best.pt", lambda o: o["model_config"].update(num_features=10**15)
    )
    one_line_error(run_cli("evaluate", run), "best.pt", "model config")


def test_a_malicious_pickle_is_not_called_corrupted(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    evil = tmp_path / "evil.pt"
    torch.save({"kind": "mixemb.pruned", "x": Payload()}, evil)
    line = one_line_error(run_cli("evaluate", evil), "not a mixemb file", "refuses")
    assert "corrupted" not in line and "weights_only" not in line
    assert "pwned" not in run_cli("evaluate", evil).stdout


def test_evaluate_uses_the_data_file_given_on_the_command_line(tmp_path):
    data = tmp_path / "ratings.dat"
    data.write_text(
        "".join(
            f"{u}::{i}::{1 + (u * i) % 5}::{u * 97 + i}\n" for u in range(30) for i in range(20)
        )
    )
    run = tmp_path / "run"
    fmt = ["--data-file", data, "--format", "movielens"]
    trained = run_cli("train", *fmt, "--model", "mf", "--dim", "4", "--epochs", "1", "--out", run)
    assert trained.returncode == 0, trained.stderr
    one_line_error(run_cli("evaluate", run), "--data-file")
    ok = run_cli("evaluate", run, "--data-file", data)
    assert ok.returncode == 0 and "mse" in ok.stdout, ok.stderr


# ---- item 4: non-finite settings and training ---------------------------------------------
@pytest.mark.parametrize(
    "argv,needle",
    [
        (["train", *TINY, "--lr", "inf"], "lr"),
        (["train", *TINY, "--lr", "nan"], "lr"),
        (["train", *TINY, "--weight-decay", "nan"], "weight_decay"),
        (["search", *TINY, "--alpha-lr", "nan", "--out", "{tmp}/s"], "alpha_lr"),
        (["search", *TINY, "--l1", "inf", "--out", "{tmp}/s"], "l1"),
        (["compare", *TINY, "--budgets", "0.5,nan", "--out", "{tmp}/c"], "--budgets"),
        (["compare", *TINY, "--mde-exponent", "inf", "--out", "{tmp}/c"], "mde_exponent"),
    ],
)
def test_non_finite_flags_are_one_line_errors(tmp_path, argv, needle):
    proc = run_cli(*[a.format(tmp=tmp_path) for a in argv])
    one_line_error(proc, needle)
    assert not (tmp_path / "s").exists() and not (tmp_path / "c").exists()


def test_prune_tau_nan_is_one_line(pruned_file):
    one_line_error(run_cli("prune", pruned_file.parent, "--tau", "nan"), "tau")


def test_diverging_training_stops_without_saving(tmp_path):
    run = tmp_path / "run"
    proc = run_cli("train", *TINY, "--lr", "1e30", "--epochs", "3", "--out", run)
    one_line_error(proc, "diverged", "not saved")
    assert not (run / "best.pt").exists() and not (run / "result.json").exists()


# ---- item 8: one line for disk full, a missing CUDA ------------------------------------------
def _file_size_limit(nbytes: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG)
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))

    return apply


def test_a_failed_checkpoint_write_is_one_line(tmp_path):
    run = tmp_path / "run"
    proc = run_cli("train", *TINY, "--epochs", "1", "--out", run, preexec=_file_size_limit(4096))
    one_line_error(proc, "could not write")
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]  # no half file left


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_device_cuda_without_cuda_is_one_line(tmp_path, command):
    argv = ["train", *TINY] if command == "train" else ["evaluate", tmp_path]
    one_line_error(run_cli(*argv, "--device", "cuda"), "--device cuda", "CUDA is not available")


# ---- item 9: resume, the output folder, file modes ----------------------------------------
def test_resume_without_a_checkpoint_starts_fresh(tmp_path):
    run = tmp_path / "run"
    run.mkdir()  # a run killed in its first epoch: a folder without last.pt
    proc = run_cli("train", *TINY, "--epochs", "1", "--out", run, "--resume")
    assert proc.returncode == 0, proc.stderr
    assert "starting fresh" in proc.stdout and (run / "best.pt").exists()


@pytest.mark.parametrize("kind", ["under a file", "read-only"])
def test_an_unwritable_out_fails_before_training(tmp_path, kind):
    if kind == "read-only":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        parent = tmp_path / "ro"
        parent.mkdir()
        parent.chmod(stat.S_IRUSR | stat.S_IXUSR)
    else:
        parent = tmp_path / "a-file"
        parent.write_text("")
    proc = run_cli("train", *TINY, "--epochs", "1", "--out", parent / "run")
    one_line_error(proc, str(parent / "run"))
    assert "epoch" not in proc.stdout  # refused before the first epoch
    if kind == "read-only":
        parent.chmod(stat.S_IRWXU)  # let pytest clean up


def test_checkpoints_get_the_umask_mode(tmp_path):
    run = tmp_path / "run"
    proc = run_cli("train", *TINY, "--epochs", "1", "--out", run, preexec=lambda: os.umask(0o027))
    assert proc.returncode == 0, proc.stderr
    for name in ("best.pt", "last.pt", "result.json"):
        assert stat.S_IMODE((run / name).stat().st_mode) == 0o640, name
