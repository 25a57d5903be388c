"""``mixemb demo``: the whole DNIS pipeline on real data, end to end, in a few minutes.

uniform-K reference → warm start + DNIS search → merge α and prune to a budget →
export one ragged file → reload it → evaluate; then the comparison that decides whether
the search paid: a plain uniform table of the same stored bytes and value dtype as the
pruned one, trained the same way. A side-by-side table ends it.

The output folder is the demo's own: it is marked with :data:`MARKER`, a later demo
replaces only a folder carrying that mark, and any other non-empty folder is refused.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch

from mixemb.metrics import primary_metric
from mixemb.prune import load_pruned
from mixemb.prune.budget import dense_bytes
from mixemb.prune.run import prune_run
from mixemb.quant import VALUE_DTYPES, round_rows, row_bytes, value_bytes
from mixemb.search import SearchConfig
from mixemb.search.run import search_run
from mixemb.train import TrainConfig, evaluate
from mixemb.train.run import load_from_spec, train_run

MARKER = ".mixemb-demo"


def prepare_out(out: str | Path) -> Path:
    """Make ``out`` an empty folder marked as the demo's; returns it.

    An existing ``out`` is replaced only when it is a folder a previous demo made (it holds
    :data:`MARKER`); an empty folder is used as it is; anything else (a file, a link, a
    non-empty folder without the mark) raises ValueError and nothing is touched.
    """
    out = Path(out)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ValueError(f"--out {out}: exists and is not a folder; pick another --out")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise ValueError(
                f"--out {out}: a non-empty folder `mixemb demo` did not make (no {MARKER}); "
                "pick another --out"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text(
        "made by `mixemb demo`: the next demo run with this --out replaces this folder\n"
    )
    return out


def _stored_at(model: torch.nn.Module, value_dtype: str) -> torch.nn.Module:
    """``model`` with its embedding table's rows rounded to ``value_dtype`` (stored at that
    precision, computed in float32), in place."""
    with torch.no_grad():
        w = model.embedding.weight
        w.copy_(round_rows(w, value_dtype))
    return model


def run_demo(
    data: str = "movielens-100k",
    task: str = "rating",
    model: str = "mf",
    dim: int = 64,
    ratio: float = 0.2,
    out: str | Path = "runs/demo",
    seed: int = 0,
    epochs: int = 30,
    warmup_epochs: int = 10,
    search_epochs: int = 20,
    finetune_epochs: int = 10,
    dtype: str = "fp32",
    log=print,
) -> list[dict]:
    """Run the pipeline into ``out`` (uniform/, dnis/, dnis/pruned.pt, uniform_same_bytes/);
    returns the table rows (method, dtype, params, bytes, the task's metric, seconds).

    dtype: value dtype of the pruned table (:data:`mixemb.quant.VALUE_DTYPES`: "fp32",
        "fp16", "bf16", "int8"); the same-bytes uniform table is stored at the same dtype.
    """
    if dtype not in VALUE_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(VALUE_DTYPES)}, got {dtype!r}")
    out = prepare_out(out)
    spec = {"name": data, "task": task, "seed": seed}
    t0 = time.perf_counter()
    dataset = load_from_spec(spec)
    metric, direction = primary_metric(task)
    n_rows = dataset.num_features
    cfg = TrainConfig(epochs=epochs, seed=seed)
    rows = []

    def uniform(label: str, d: int, folder: str, value_dtype: str) -> dict:
        t = time.perf_counter()
        _, trained, _ = train_run(spec, model, d, cfg, out / folder, dataset=dataset, log=log)
        n = n_rows * d
        stored = _stored_at(trained, value_dtype)
        return {
            "method": label,
            "dtype": value_dtype,
            "params": n,
            "bytes": dense_bytes(n_rows, d, value_dtype),
            metric: evaluate(stored, dataset.test, task)[metric],
            "seconds": time.perf_counter() - t,
        }

    log(f"== 1/4 uniform K={dim} reference")
    rows.append(uniform(f"uniform K={dim}", dim, "uniform", "fp32"))

    log("== 2/4 DNIS search (warm start, then α on validation batches)")
    t = time.perf_counter()
    scfg = SearchConfig(
        dim=dim, warmup_epochs=warmup_epochs, search_epochs=search_epochs, seed=seed
    )
    searched, _ = search_run(spec, model, scfg, out / "dnis", dataset=dataset, log=log)
    search_s = time.perf_counter() - t
    rows.append(
        {
            "method": "DNIS unpruned",
            "dtype": "fp32",
            "params": n_rows * dim,
            "bytes": 4 * n_rows * dim,
            metric: evaluate(searched, dataset.test, task)[metric],
            "seconds": search_s,
        }
    )

    log(
        f"== 3/4 merge α, prune to {ratio:.0%} of uniform, fine-tune with the mask fixed, "
        "export, reload, evaluate"
    )
    pruned_file = out / "dnis" / "pruned.pt"
    info = prune_run(
        out / "dnis",
        pruned_file,
        ratio=ratio,
        dtype=dtype,
        finetune_epochs=finetune_epochs,
        log=log,
    )
    reloaded, _ = load_pruned(pruned_file)
    dnis = {
        "method": f"DNIS {ratio:.0%}",
        "dtype": dtype,
        "params": info["nnz"],
        "bytes": info["stored_bytes"],
        metric: evaluate(reloaded, dataset.test, task)[metric],
        "seconds": search_s + info["seconds"],
    }
    rows.append(dnis)

    # the widest dense table that fits the pruned table's bytes (at least one dimension)
    same_d = max(1, (dnis["bytes"] // n_rows - row_bytes(dtype)) // value_bytes(dtype))
    log(f"== 4/4 uniform d={same_d} at {dtype}: the plain table of the pruned one's bytes")
    same = uniform(f"uniform d={same_d}", same_d, "uniform_same_bytes", dtype)
    rows.append(same)

    log("")
    log(
        f"{'method':16s} {'dtype':>5s} {'params':>10s} {'stored bytes':>13s} "
        f"{'test ' + metric:>10s} {'wall s':>7s}"
    )
    for r in rows:
        log(
            f"{r['method']:16s} {r['dtype']:>5s} {r['params']:>10,} {r['bytes']:>13,} "
            f"{r[metric]:>10.4f} {r['seconds']:>7.1f}"
        )
    better = "lower" if direction == "min" else "higher"
    log(
        f"at equal stored bytes: {dnis['method']} {metric} {dnis[metric]:.4f} "
        f"({dnis['bytes']:,} B) vs {same['method']} {same[metric]:.4f} ({same['bytes']:,} B); "
        f"{better} is better"
    )
    log(
        "mean kept dim per frequency block (frequent → rare): "
        + " ".join(f"{d:.1f}" for d in info["block_mean_dims"])
    )
    log(f"total {time.perf_counter() - t0:.0f}s; files in {out}")
    return rows
