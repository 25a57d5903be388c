"""The planted benchmark: does the DNIS search recover known signal dimensions, and does it
beat MDE and the uniform grid at equal bytes where mixed dimensions should matter?

For each instance (a ``dims_law`` × ``basis`` of :mod:`mixemb.data.planted`), id order
(``--id-orders``: "frequency", α blocks over all ids; "field", α blocks per field,
:meth:`mixemb.data.Dataset.block_boundaries`) and seed (``--seeds``: the data, split and
training all follow it):

1. recovery — the DNIS search of an FM (:func:`mixemb.methods.shared.searched`, the search
   ``dnis_ft`` uses) and the trained uniform-K table, each pruned at every recovery budget
   (a fraction of the uniform-K table's fp32 bytes) element-wise (ragged metadata paid)
   and to one column set per α block (the ``*_blockmask*`` allocation), and MDE's block
   dims; the kept dims per id scored against the planted r
   (:func:`mixemb.data.planted.recovery`: Spearman over the α blocks' means, the fields'
   means, and per feature over ids seen ≥ ``--min-count`` times in training);
2. accuracy — :func:`mixemb.methods.compare` at the accuracy budgets, validation for
   selection, test reported, for ``--methods`` (default :data:`METHODS_RUN`).

One JSON per (instance, order, seed) in ``--out`` (``field-axis.json``,
``field-axis-by-field-s1.json``, …; skipped when present: rerun by deleting it); the
comparisons' own files go to ``--runs``. ``python -m experiments.planted_report`` renders
the tables of docs/planted.md from them. The runs behind it::

    OMP_NUM_THREADS=1 .venv/bin/python experiments/planted.py --out docs/planted \
        --instances field-axis --id-orders field,frequency --seeds 0,1,2
    OMP_NUM_THREADS=1 .venv/bin/python experiments/planted.py --out docs/planted \
        --instances hump-axis --id-orders field,frequency --seeds 0
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from mixemb.data import load_dataset, recovery, spearman
from mixemb.methods import METHODS, InfeasibleBudget, MethodConfig, compare
from mixemb.methods.blocks import block_sizes
from mixemb.methods.cells import keep_entries
from mixemb.methods.mde import mde_block_dims
from mixemb.methods.shared import searched, uniform_k
from mixemb.metrics import primary_metric
from mixemb.prune import merged_table, prune_table
from mixemb.prune.pruners import block_mask_prune
from mixemb.train import write_json

INSTANCES = {
    "field-axis": {"dims_law": "field", "basis": "axis"},
    "hump-axis": {"dims_law": "hump", "basis": "axis"},
    "field-rotated": {"dims_law": "field", "basis": "field"},
}
DNIS_FAMILY = (
    "dnis_ft",
    "dnis_blockmask_ft",
    "dnis_blockmask_rot_ft",
    "dnis_warm_blockmask_rot_ft",
)
METHODS_RUN = (
    "uniform", "mde_blocks@0.3", "svd_ft", "magnitude_blockmask_rot_ft", *DNIS_FAMILY
)  # fmt: skip
ID_ORDERS = ("frequency", "field")


def allocations(ds, cfg: MethodConfig, seed: int, budgets, log) -> dict:
    """Budget → {allocation name: (N,) kept dims per id} for DNIS, MDE and magnitude
    (element-wise pruning for DNIS and magnitude, MDE's dims per α block)."""
    boundaries, sizes = block_sizes(ds, cfg)
    freq = torch.as_tensor(ds.encoder.frequencies, dtype=torch.float64)
    mean_freq = [float(freq[a:b].mean()) for a, b in zip(boundaries[:-1], boundaries[1:])]
    dnis = merged_table(searched(ds, "fm", cfg, seed, log)["model"].embedding)
    plain = merged_table(uniform_k(ds, "fm", cfg, seed, log)["model"].embedding)
    out = {}
    for b in budgets:
        try:
            keep = keep_entries(ds, cfg, b, "ragged")
        except InfeasibleBudget:  # the ragged metadata alone exceeds the budget
            continue
        block_keep = keep_entries(ds, cfg, b, "blocks")
        mask_keep = keep_entries(ds, cfg, b, "blockmask")
        mde = mde_block_dims(mean_freq, sizes, cfg.dim, block_keep, cfg.mde_exponent)
        out[b] = {
            "dnis": prune_table(dnis, keep, "elem")[1].dims,
            "magnitude": prune_table(plain, keep, "elem")[1].dims,
            "dnis_blockmask": block_dims_per_id(dnis, boundaries, mask_keep),
            "magnitude_blockmask": block_dims_per_id(plain, boundaries, mask_keep),
            f"mde_blocks@{cfg.mde_exponent:g}": torch.repeat_interleave(
                torch.tensor(mde), torch.tensor(sizes)
            ),
        }
    return out


def block_dims_per_id(merged: torch.Tensor, boundaries: torch.Tensor, keep: int) -> torch.Tensor:
    """(N,) int64 dims per id of ``merged`` (N, K) pruned to one column set per α block
    within ``keep`` entries (the ``*_blockmask*`` methods' allocation, before rotation)."""
    block_mask = block_mask_prune(merged, boundaries, keep)[1]
    return torch.repeat_interleave(block_mask.sum(1), boundaries[1:] - boundaries[:-1])


def accuracy_rows(results: dict, task: str) -> list[dict]:
    """The comparison's cells as small rows (method, budget, valid, test, bytes, time)."""
    metric, _ = primary_metric(task)
    rows = []
    for cell in results["cells"].values():
        if "skipped" in cell:
            continue
        rows.append(
            {
                "method": cell["method"],
                "budget": cell["budget"],
                f"valid_{metric}": cell["valid"][metric],
                f"test_{metric}": cell["test"][metric],
                "valid_logloss": cell["valid"].get("logloss"),
                "test_logloss": cell["test"].get("logloss"),
                "stored_bytes": cell["stored_bytes"],
                "seconds": cell["seconds"],
                **{k: cell[k] for k in ("block_dims", "block_mean_dims") if k in cell},
            }
        )
    return rows


def verdict(rows: list[dict], budgets, metric: str = "auc") -> dict:
    """Per budget: the DNIS-family method and the baseline with the best validation
    metric, and their test gap (one seed: no error bar)."""
    out = {}
    for b in budgets:
        here = [r for r in rows if r["budget"] == b]
        ours = [r for r in here if r["method"].split("@")[0] in DNIS_FAMILY]
        theirs = [r for r in here if r["method"].split("@")[0] not in DNIS_FAMILY]
        if not ours or not theirs:
            continue
        a = max(ours, key=lambda r: r[f"valid_{metric}"])
        c = max(theirs, key=lambda r: r[f"valid_{metric}"])
        out[f"{b:g}"] = {
            "dnis": a["method"],
            "baseline": c["method"],
            f"test_{metric}_gap": a[f"test_{metric}"] - c[f"test_{metric}"],
        }
    return out


def run_instance(name: str, id_order: str, args, log) -> dict:
    kwargs = dict(INSTANCES[name], scale=args.scale, num_rows=args.rows, dim=args.planted_dim)
    spec = {"name": "planted", "task": "ctr", "seed": args.seed, "min_count": 1, **kwargs}
    if id_order != "frequency":  # the frequency order's spec predates the option
        spec["id_order"] = id_order
    t0 = time.perf_counter()
    ds = load_dataset(**spec)
    cfg = MethodConfig(dim=args.dim, budget_unit="bytes")
    planted, freq = ds.planted_dims, np.asarray(ds.encoder.frequencies)
    fields = np.asarray(ds.encoder.field_of_id)
    sel = (planted.numpy() >= 0) & (freq >= args.min_count)
    boundaries, _ = block_sizes(ds, cfg)
    head = {
        "instance": name,
        "id_order": id_order,
        "seed": args.seed,
        "dataset": spec,
        "config": asdict(cfg),
        "num_features": ds.num_features,
        "cardinalities": ds.info["cardinalities"],
        "rows": ds.info["rows"],
        "train_click_rate": float(ds.train.labels.mean()),
        "min_count": args.min_count,
        "planted_vs_frequency": spearman(planted.numpy()[sel], freq[sel]),
        "planted_block_means": recovery(planted.clamp(min=0), planted, freq, boundaries)[
            "block_mean_planted"
        ],
        "planted_field_means": recovery(
            planted.clamp(min=0), planted, freq, boundaries, field_of_id=fields
        )["field_mean_planted"],
    }
    alloc = allocations(ds, cfg, args.seed, args.recovery_budgets, log)
    head["recovery"] = {
        f"{b:g}": {
            k: {
                **recovery(dims, planted, freq, boundaries, args.min_count, fields),
                "mean": float(dims.double().mean()),
            }
            for k, dims in per.items()
        }
        for b, per in alloc.items()
    }
    results = compare(
        ds, spec, "fm", cfg, methods=args.methods, budgets=args.accuracy_budgets,
        seeds=(args.seed,), out=Path(args.runs) / run_name(name, id_order, args.seed), log=log,
    )  # fmt: skip
    head["accuracy"] = accuracy_rows(results, ds.task)
    head["verdict"] = verdict(head["accuracy"], args.accuracy_budgets)
    head["seconds"] = time.perf_counter() - t0
    return head


def run_name(instance: str, id_order: str, seed: int) -> str:
    """The instance's file stem: ``field-axis`` (frequency order, seed 0),
    ``field-axis-by-field-s1`` …"""
    return (
        instance
        + ("" if id_order == "frequency" else f"-by-{id_order}")
        + (f"-s{seed}" if seed else "")
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="docs/planted", help="one small JSON per instance")
    p.add_argument("--runs", default="runs/planted", help="the comparisons' own files")
    p.add_argument("--instances", default=",".join(INSTANCES))
    p.add_argument("--scale", type=float, default=0.01)
    p.add_argument("--rows", type=int, default=300_000)
    p.add_argument("--dim", type=int, default=64, help="K of the model's table")
    p.add_argument("--planted-dim", type=int, default=32, help="the largest planted r")
    p.add_argument("--seeds", default="0", help="comma-separated; one JSON per seed")
    p.add_argument(
        "--id-orders", default="frequency",
        help="comma-separated: frequency (α blocks over all ids), field (α blocks per field)",
    )  # fmt: skip
    p.add_argument("--methods", default=",".join(METHODS_RUN))
    p.add_argument("--min-count", type=int, default=20, help="per-feature recovery threshold")
    p.add_argument("--recovery-budgets", default="0.2,0.1,0.05")
    p.add_argument("--accuracy-budgets", default="0.1,0.05")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    args.recovery_budgets = [float(x) for x in args.recovery_budgets.split(",")]
    args.accuracy_budgets = [float(x) for x in args.accuracy_budgets.split(",")]
    args.methods = args.methods.split(",")
    unknown = [m for m in args.methods if m.split("@")[0].split(":")[0] not in METHODS]
    if unknown:
        raise SystemExit(f"unknown methods {', '.join(unknown)}; known: {', '.join(METHODS)}")
    orders = args.id_orders.split(",")
    if any(o not in ID_ORDERS for o in orders):
        raise SystemExit(f"--id-orders must be from {', '.join(ID_ORDERS)}, got {args.id_orders}")
    log = (lambda _: None) if args.quiet else print
    out = Path(args.out)
    for name in args.instances.split(","):
        if name not in INSTANCES:
            raise SystemExit(f"unknown instance {name!r}; known: {', '.join(INSTANCES)}")
    for seed in [int(x) for x in args.seeds.split(",")]:
        for id_order in orders:
            for name in args.instances.split(","):
                path = out / f"{run_name(name, id_order, seed)}.json"
                if path.exists():
                    print(f"{path} exists: skipped")
                    continue
                args.seed = seed
                result = run_instance(name, id_order, args, log)
                write_json(result, path)
                scores = ("block", "field", "feature")
                summary = {
                    "recovery": {
                        b: {k: {x: round(r[x], 3) for x in scores} for k, r in per.items()}
                        for b, per in result["recovery"].items()
                    },
                    "verdict": result["verdict"],
                }
                print(json.dumps({"instance": path.stem, **summary}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
