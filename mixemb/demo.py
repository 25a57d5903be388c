"""``mixemb demo``: the whole DNIS pipeline on real data, end to end, in a few minutes.

uniform-K baseline → warm start + DNIS search → merge α and prune to a budget →
export one ragged file → reload it → evaluate, and a side-by-side table.
"""

from __future__ import annotations

import time
from pathlib import Path

from mixemb.metrics import primary_metric
from mixemb.prune import load_pruned
from mixemb.prune.run import prune_run
from mixemb.search import SearchConfig
from mixemb.search.run import search_run
from mixemb.train import TrainConfig, evaluate
from mixemb.train.run import load_from_spec, train_run


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
    log=print,
) -> list[dict]:
    """Run the pipeline into ``out`` (uniform/, dnis/, dnis/pruned.pt); returns table rows."""
    out = Path(out)
    spec = {"name": data, "task": task, "seed": seed}
    t0 = time.perf_counter()
    dataset = load_from_spec(spec)
    metric, _ = primary_metric(task)
    rows = []

    log(f"== 1/3 uniform K={dim} baseline")
    cfg = TrainConfig(epochs=epochs, seed=seed)
    t = time.perf_counter()
    result, _, _ = train_run(spec, model, dim, cfg, out / "uniform", dataset=dataset, log=log)
    n = dataset.num_features * dim
    rows.append(
        {
            "method": f"uniform K={dim}",
            "params": n,
            "bytes": 4 * n,
            metric: result.test[metric],
            "seconds": time.perf_counter() - t,
        }
    )

    log("== 2/3 DNIS search (warm start, then α on validation batches)")
    t = time.perf_counter()
    scfg = SearchConfig(
        dim=dim, warmup_epochs=warmup_epochs, search_epochs=search_epochs, seed=seed
    )
    searched, _ = search_run(spec, model, scfg, out / "dnis", dataset=dataset, log=log)
    search_s = time.perf_counter() - t
    rows.append(
        {
            "method": "DNIS unpruned",
            "params": n,
            "bytes": 4 * n,
            metric: evaluate(searched, dataset.test, task)[metric],
            "seconds": search_s,
        }
    )

    log(
        f"== 3/3 merge α, prune to {ratio:.0%} of uniform, fine-tune with the mask fixed, "
        "export, reload, evaluate"
    )
    pruned_file = out / "dnis" / "pruned.pt"
    info = prune_run(
        out / "dnis", pruned_file, ratio=ratio, finetune_epochs=finetune_epochs, log=log
    )
    reloaded, _ = load_pruned(pruned_file)
    test = evaluate(reloaded, dataset.test, task)
    rows.append(
        {
            "method": f"DNIS {ratio:.0%}",
            "params": info["nnz"],
            "bytes": info["stored_bytes"],
            metric: test[metric],
            "seconds": search_s + info["seconds"],
        }
    )
    log("")
    log(
        f"{'method':16s} {'params':>10s} {'stored bytes':>13s} "
        f"{'test ' + metric:>10s} {'wall s':>7s}"
    )
    for r in rows:
        log(
            f"{r['method']:16s} {r['params']:>10,} {r['bytes']:>13,} {r[metric]:>10.4f} "
            f"{r['seconds']:>7.1f}"
        )
    log(
        "mean kept dim per frequency block (frequent → rare): "
        + " ".join(f"{d:.1f}" for d in info["block_mean_dims"])
    )
    log(f"total {time.perf_counter() - t0:.0f}s; files in {out}")
    return rows
