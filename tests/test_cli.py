"""CLI: readable help, one-line errors with non-zero exit, train → evaluate round trip."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from mixemb.cli import main


def test_help_lists_commands_and_examples(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for word in ("fetch", "train", "evaluate", "examples:", "MIXEMB_DATA"):
        assert word in out


def test_train_help_explains_tasks(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "leave-one-out" in out and "--resume" in out and "--data-file" in out


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "usage:" in capsys.readouterr().out


def test_errors_are_one_line_without_traceback(tmp_path):
    bad = tmp_path / "ratings.dat"
    bad.write_text("1::2::5::978300760\n1::3::oops::978300761\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mixemb",
            "train",
            "--data-file",
            str(bad),
            "--format",
            "movielens",
            "--epochs",
            "1",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("mixemb: error:")
    assert "ratings.dat" in lines[0] and "2" in lines[0] and "oops" in lines[0]
    assert "Traceback" not in proc.stderr


def test_data_file_without_format_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "--data-file", str(tmp_path / "x.csv")]) == 2
    assert "--format" in capsys.readouterr().err


def test_evaluate_missing_run_is_a_clear_error(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nope")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err


def test_train_evaluate_round_trip_and_resume_guard(tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "train",
        "--data",
        "synthetic",
        "--task",
        "rating",
        "--model",
        "fm",
        "--dim",
        "8",
        "--epochs",
        "2",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "test: mse" in printed
    result = json.loads((out / "result.json").read_text())
    assert result["model"] == "fm" and len(result["history"]) == 2

    assert main(["evaluate", str(out), "--split", "test"]) == 0
    ev = capsys.readouterr().out
    assert f"mse {result['test']['mse']:.4f}" in ev  # the reloaded model scores the same

    assert main(args) == 2  # refuses to overwrite a run without --resume
    assert "--resume" in capsys.readouterr().err
    assert main(args + ["--resume"]) == 0  # already finished: resumes to the same answer
    assert f"mse {result['test']['mse']:.4f}" in capsys.readouterr().out


def _train_tiny_mf(out, capsys) -> None:
    """A one-epoch K=4 MF run on synthetic data in ``out`` (output swallowed)."""
    args = ["train", "--data", "synthetic", "--model", "mf", "--dim", "4", "--epochs", "1"]
    assert main([*args, "--out", str(out)]) == 0
    capsys.readouterr()


def test_evaluate_reports_damaged_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    _train_tiny_mf(out, capsys)
    best = out / "best.pt"
    best.write_bytes(best.read_bytes()[:100])
    assert main(["evaluate", str(out)]) == 2
    err = capsys.readouterr().err
    assert "truncated or corrupted" in err and "best.pt" in err


def test_search_prune_evaluate_pipeline(tmp_path, capsys):
    run = tmp_path / "dnis"
    common = ["--data", "synthetic", "--model", "fm", "--dim", "8", "--blocks", "4"]
    assert (
        main(["search", *common, "--warmup-epochs", "1", "--search-epochs", "1", "--out", str(run)])
        == 0
    )
    assert "α mean per block" in capsys.readouterr().out
    assert main(["prune", str(run), "--ratio", "0.25"]) == 0
    out = capsys.readouterr().out
    assert "25.00% of uniform" in out and "bytes incl. metadata" in out
    test_line = [line for line in out.splitlines() if line.startswith("test:")][0]
    assert main(["evaluate", str(run / "pruned.pt")]) == 0
    assert test_line.split("test: ")[1] in capsys.readouterr().out  # reload predicts the same
    # int8 values: the same budget in bytes holds more entries; the file reloads as int8
    int8_file = tmp_path / "pruned_int8.pt"
    budget = ["--bytes", "15000", "--out", str(int8_file)]
    assert main(["prune", str(run), *budget, "--dtype", "int8"]) == 0
    int8_out = capsys.readouterr().out
    assert main(["prune", str(run), *budget, "--out", str(tmp_path / "fp32.pt")]) == 0
    fp32_out = capsys.readouterr().out
    from mixemb.prune import load_pruned

    int8_model, _ = load_pruned(int8_file)
    fp32_model, _ = load_pruned(tmp_path / "fp32.pt")
    assert int8_model.embedding.table.value_format == "int8"
    assert int8_model.embedding.nbytes() <= 15000 >= fp32_model.embedding.nbytes()
    assert int8_model.embedding.table.nnz > 2 * fp32_model.embedding.table.nnz
    assert "int8" in int8_out and fp32_out != int8_out
    with pytest.raises(SystemExit) as exc:  # one budget only: argparse refuses two
        main(["prune", str(run), "--ratio", "0.25", "--keep", "3"])
    assert exc.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


def test_search_prune_evaluate_with_blocks_by_field(tmp_path, capsys):
    run = tmp_path / "dnis"
    common = ["--data", "synthetic", "--task", "ctr", "--model", "fm", "--dim", "8"]
    common += ["--blocks", "2", "--blocks-by", "field"]
    argv = ["search", *common, "--warmup-epochs", "1", "--search-epochs", "1", "--out", str(run)]
    assert main([*argv, "--alpha-split", "1.5"]) == 2  # a clear error, no traceback
    assert "alpha_split must be in [0, 1), got 1.5" in capsys.readouterr().err
    assert main([*argv, "--alpha-split", "0.2"]) == 0  # α on held-out training rows
    assert json.loads((run / "search.json").read_text())["search_config"]["alpha_split"] == 0.2
    searched = torch.load(run / "searched.pt", weights_only=True)
    assert searched["encoder"]["id_order"] == "field"
    fields = searched["encoder"]["field_of_id"]
    bounds = searched["model"]["embedding.boundaries"]
    assert len(bounds) - 1 == int(torch.bincount(fields).clamp(max=2).sum())  # 2 bands a field
    assert main(["prune", str(run), "--ratio", "0.25"]) == 0
    test_line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("test:")][0]
    assert main(["evaluate", str(run / "pruned.pt")]) == 0
    assert test_line.split("test: ")[1] in capsys.readouterr().out


@pytest.mark.parametrize("finetune", ["0", "1"])
def test_prune_at_fp16_serves_a_model_with_dense_layers(tmp_path, capsys, finetune):
    run = tmp_path / "dnis"
    common = ["--data", "synthetic", "--model", "deepfm", "--dim", "8", "--blocks", "4"]
    argv = ["search", *common, "--warmup-epochs", "1", "--search-epochs", "1", "--out", str(run)]
    assert main(argv) == 0
    pruned = ["prune", str(run), "--ratio", "0.25", "--dtype", "fp16"]
    assert main([*pruned, "--finetune-epochs", finetune]) == 0
    test_line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("test:")][0]
    assert main(["evaluate", str(run / "pruned.pt")]) == 0
    assert test_line.split("test: ")[1] in capsys.readouterr().out


def test_compare_command_writes_results(tmp_path, capsys):
    out = tmp_path / "cmp"
    args = [
        "compare",
        "--data",
        "synthetic",
        "--model",
        "mf",
        "--dim",
        "8",
        "--blocks",
        "4",
        "--epochs",
        "1",
        "--warmup-epochs",
        "1",
        "--search-epochs",
        "1",
        "--methods",
        "uniform,dnis",
        "--budgets",
        "0.5",
        "--seeds",
        "0",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    assert "| dnis | 0.5 |" in capsys.readouterr().out
    assert (out / "results.json").exists() and (out / "results.md").exists()


def test_cli_value_dtypes_are_the_packages():
    from mixemb import cli, quant

    assert cli.VALUE_DTYPES == quant.VALUE_DTYPES


def test_demo_pipeline_on_synthetic_data(tmp_path):
    from mixemb.demo import run_demo

    lines: list[str] = []
    rows = run_demo(
        data="synthetic",
        dim=8,
        ratio=0.25,
        out=tmp_path,
        epochs=2,
        warmup_epochs=1,
        search_epochs=1,
        finetune_epochs=1,
        log=lines.append,
    )
    uniform, _, dnis, same = rows
    assert [r["method"] for r in rows[:3]] == ["uniform K=8", "DNIS unpruned", "DNIS 25%"]
    assert dnis["params"] == round(0.25 * uniform["params"])
    assert dnis["bytes"] < uniform["bytes"]
    # the plain table of the same bytes: the widest fp32 table within the pruned one's bytes
    n = uniform["params"] // 8
    d = dnis["bytes"] // (4 * n)
    assert same["method"] == f"uniform d={d}" and same["bytes"] == 4 * n * d <= dnis["bytes"]
    assert same["bytes"] + 4 * n > dnis["bytes"] and same["dtype"] == dnis["dtype"] == "fp32"
    assert (tmp_path / "dnis" / "pruned.pt").exists()
    assert (tmp_path / "uniform_same_bytes" / "best.pt").exists()
    assert any(line.startswith("at equal stored bytes: DNIS 25%") for line in lines)
    assert any(line.startswith("mean kept dim per frequency block") for line in lines)


def test_demo_at_int8_compares_with_the_int8_table_of_the_same_bytes(tmp_path):
    from mixemb.demo import run_demo
    from mixemb.prune.budget import dense_bytes

    rows = run_demo(
        data="synthetic", dim=8, ratio=0.25, out=tmp_path, epochs=1, warmup_epochs=1,
        search_epochs=1, finetune_epochs=0, dtype="int8", log=lambda s: None,
    )  # fmt: skip
    uniform, _, dnis, same = rows
    n = uniform["params"] // 8
    d = int(same["method"].split("=")[1])
    assert same["dtype"] == dnis["dtype"] == "int8"
    assert (
        same["bytes"] == dense_bytes(n, d, "int8") <= dnis["bytes"] < dense_bytes(n, d + 1, "int8")
    )


@pytest.mark.parametrize(
    "argv,fields_without_flag",
    [
        (["train"], {"eval_batch_size"}),
        (["search", "--out", "x"], {"eval_batch_size", "eps", "num_blocks", "normalize"}),
    ],
)
def test_every_config_field_has_its_flag(argv, fields_without_flag):
    """The commands build their configs from the flags named as the config's fields
    (num_blocks and normalize come from --blocks and --no-normalize)."""
    from dataclasses import fields

    from mixemb.cli import build_parser
    from mixemb.search import SearchConfig
    from mixemb.train import TrainConfig

    cls = {"train": TrainConfig, "search": SearchConfig}[argv[0]]
    flags = set(vars(build_parser().parse_args(argv)))
    assert {f.name for f in fields(cls)} - fields_without_flag <= flags
