"""Resident memory of a process serving the README's ``Ranker``, pruned vs unpruned, from
Python and from C++ (its AOTInductor package run by ``serve_aoti``).

    python bench/bench_serve_memory.py --serve-aoti build/serve_aoti
        [--users 1000000 --items 1000000 --dim 64 --ratio 0.1 --batch 1024 --history 20]
        [--weights so,blob] [--repeats 5] [--work runs/serve_memory] [--reuse]

For each model — pruned to ``--ratio`` of its dense bytes, and unpruned — and each place
a package keeps its weights (``--weights``: ``so`` inside the model's shared library, torch's
default; ``blob`` a binary file beside it), it runs ``scripts/export_aoti.py`` into
``WORK/<model>[-blob]`` (package, batch, model file; a minute or two of compiling each),
then scores that batch in fresh processes:

* python (once per model): imports mixemb, builds a fresh ``Ranker`` and loads the model
  file into it (``mixemb.load``; the unpruned model: ``load_state_dict`` of its dense
  state), scores under ``torch.inference_mode``;
* c++: ``serve_aoti PACKAGE BATCH`` (``csrc/test/serve_aoti.cpp``, built by CMake).

Both check the scores against the eager ones and print ``/proc/self/status`` (VmRSS,
RssAnon, RssFile, VmHWM) at start, after loading and after scoring; each process runs
``--repeats`` times and the run with the median final RSS gives the figures. One row per
model and process is appended to ``--out`` (default ``bench/results/bench_serve_memory.json``), its
Markdown table written beside it. ``--reuse`` keeps a ``WORK`` folder whose config.json
has the same sizes, ratio and weights instead of exporting it again.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from common import REPO_ROOT, RowsFile, markdown_table, run_metadata, write_markdown  # noqa: E402
from export_aoti import Ranker  # noqa: E402

import mixemb  # noqa: E402

EXPORT = REPO_ROOT / "scripts" / "export_aoti.py"
SIZES = ("users", "items", "dim", "batch", "history")
# export_aoti.py --weights → the C++ process's name in the table, and its folder's suffix
CPP_WEIGHTS = {"so": "c++ (weights in .so)", "blob": "c++ (weights file)"}
WORK_SUFFIX = {"so": "", "blob": "-blob"}
MEMORY_LINE = re.compile(
    r"memory_kib step=(\w+) rss=(-?\d+) anon=(-?\d+) file=(-?\d+) peak=(-?\d+)"
)
COLUMNS = [
    ("model", "model"),
    ("process", "process"),
    ("table_mb", "tables MB"),
    ("package_mb", "package MB"),
    ("start_mb", "RSS at start MB"),
    ("loaded_mb", "RSS loaded MB"),
    ("scored_mb", "RSS scored MB"),
    ("anon_mb", "of which anon MB"),
    ("peak_mb", "peak (VmHWM) MB"),
]


def status_kib() -> dict[str, int]:
    """This process's VmRSS, RssAnon, RssFile and VmHWM in KiB (/proc/self/status)."""
    fields = {}
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                fields[key] = int(value.split()[0])
    return fields


def print_memory(step: str) -> None:
    """One line in serve_aoti's format, for both processes' output to parse alike."""
    s = status_kib()
    print(
        f"memory_kib step={step} rss={s['VmRSS']} anon={s['RssAnon']} file={s['RssFile']} "
        f"peak={s['VmHWM']}",
        flush=True,
    )


def serve_python(folder: Path) -> None:
    """The Python server: a fresh Ranker, the model file loaded into it, the batch scored
    and compared with the eager scores (SystemExit when they differ)."""
    print_memory("start")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    batch = torch.load(folder / "batch.pt", weights_only=True)
    model = Ranker(config["users"], config["items"], config["dim"])
    if config["pruned"]:
        mixemb.load(folder / "ranker.pt", model)
    else:
        model.load_state_dict(torch.load(folder / "ranker.pt", weights_only=True))
    model.eval()
    print_memory("loaded")
    with torch.inference_mode():
        scores = model(*batch["inputs"])
    print_memory("scored")
    if not torch.equal(scores, batch["expected"]):
        raise SystemExit(
            f"{folder}: Python's scores differ from the exported batch's "
            "(mixemb._C rebuilt since? export again, without --reuse)"
        )


def parse_memory(output: str) -> dict[str, dict[str, int]]:
    """step → {rss, anon, file, peak} KiB from a server's output lines."""
    steps = {}
    for m in MEMORY_LINE.finditer(output):
        rss, anon, file, peak = (int(v) for v in m.groups()[1:])
        steps[m.group(1)] = {"rss": rss, "anon": anon, "file": file, "peak": peak}
    if set(steps) != {"start", "loaded", "scored"}:
        raise RuntimeError(f"no memory lines for start, loaded, scored in:\n{output[-2000:]}")
    return steps


def _final(steps: dict[str, dict[str, int]]) -> int:
    return steps["scored"]["rss"]


def run(cmd: list[str]) -> str:
    """stdout of ``cmd`` (RuntimeError with its output when it fails)."""
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return proc.stdout


def export(folder: Path, sizes: dict, ratio: float | None, weights: str, reuse: bool) -> dict:
    """config.json of ``folder`` after exporting the model there (or reusing it)."""
    config_path = folder / "config.json"
    wanted = {**sizes, "ratio": ratio, "weights": weights}
    if reuse and config_path.exists():
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if all(config.get(k) == v for k, v in wanted.items()):
            print(f"reusing {folder}")
            return config
    cmd = [sys.executable, str(EXPORT), str(folder), f"--weights={weights}"]
    cmd += [f"--{k}={v}" for k, v in sizes.items()]
    cmd += ["--unpruned"] if ratio is None else [f"--ratio={ratio}"]
    print(run(cmd).strip().splitlines()[-1])
    return json.loads(config_path.read_text(encoding="utf-8"))


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve-aoti", type=Path, help="the serve_aoti program CMake built")
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--ratio", type=float, default=0.1)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--history", type=int, default=20)
    parser.add_argument(
        "--weights",
        default="so,blob",
        help="comma-separated: the packages C++ serves (scripts/export_aoti.py --weights)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="fresh processes per figure")
    parser.add_argument("--work", type=Path, default=REPO_ROOT / "runs" / "serve_memory")
    parser.add_argument("--reuse", action="store_true", help="keep matching exports")
    parser.add_argument(
        "--out", type=Path, default=REPO_ROOT / "bench" / "results" / "bench_serve_memory.json"
    )
    parser.add_argument("--serve-python", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_python is not None:  # the fresh Python process of a measurement
        serve_python(args.serve_python)
        return []
    if args.serve_aoti is None or not args.serve_aoti.is_file():
        raise SystemExit(f"--serve-aoti must be the serve_aoti program, got {args.serve_aoti}")
    if args.repeats < 1:
        raise SystemExit(f"--repeats must be at least 1, got {args.repeats}")
    weights = args.weights.split(",")
    if not weights or not set(weights) <= set(CPP_WEIGHTS):
        raise SystemExit(
            f"--weights must name some of {', '.join(CPP_WEIGHTS)}, got {args.weights}"
        )

    sizes = {k: getattr(args, k) for k in SIZES}
    meta = run_metadata(torch.device("cpu"))
    rows = RowsFile(args.out)
    for model, ratio in ((f"pruned to {args.ratio:g}", args.ratio), ("unpruned", None)):
        for where in weights:
            folder = args.work / (("pruned" if ratio else "unpruned") + WORK_SUFFIX[where])
            config = export(folder, sizes, ratio, where, args.reuse)
            package, batch = str(folder / "ranker.pt2"), str(folder / "batch.pt")
            servers = {CPP_WEIGHTS[where]: [str(args.serve_aoti.resolve()), package, batch]}
            if where == weights[0]:  # Python serves the model file, the same in every folder
                python = [sys.executable, str(Path(__file__).resolve()), "--serve-python"]
                servers = {"python": [*python, str(folder)], **servers}
            for process, cmd in servers.items():
                # a Python process's heap keeps a varying share of what loading freed
                # (glibc): each figure is the run of median final RSS of --repeats
                runs = sorted((parse_memory(run(cmd)) for _ in range(args.repeats)), key=_final)
                steps = runs[len(runs) // 2]
                row = {
                    **meta,
                    "bench": "serve_memory",
                    "shape": {**sizes, "ratio": ratio},
                    "model": model,
                    "process": process,
                    "table_mb": config["table_bytes"] / 1e6,
                    "package_mb": config["package_bytes"] / 1e6,
                    "steps_kib": steps,
                    **{f"{step}_mb": steps[step]["rss"] * 1024 / 1e6 for step in steps},
                    "anon_mb": steps["scored"]["anon"] * 1024 / 1e6,
                    "peak_mb": steps["scored"]["peak"] * 1024 / 1e6,
                    "scored_mb_runs": [_final(r) * 1024 / 1e6 for r in runs],
                }
                rows.add(row)
                print(f"{model} {process}: RSS {row['scored_mb']:.0f} MB")
    table = markdown_table(rows.rows, COLUMNS)
    shape = ", ".join(f"{k}={v}" for k, v in sizes.items())
    write_markdown(
        args.out.with_suffix(".md"),
        f"## serve_memory on {meta['device']}\n\ntorch {meta['torch']}, commit "
        f"{meta['commit']}, {meta['date']}\n\nshape: {shape}\n\n{table}",
    )
    print(table)
    return rows.rows


if __name__ == "__main__":
    main()
