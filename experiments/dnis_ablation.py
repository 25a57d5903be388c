"""DNIS ablation on VALIDATION data: one warm start, many search / prune / fine-tune variants.

The warm start (α fixed at 1, best-on-validation kept) is trained once per warm-start
length and cached in ``--out``; every search variant starts from a copy of it. For each
searched model and budget the merged table Ê = E ⊙ α is pruned

* ``elem``    — element-wise magnitude pruning of Ê (the DNIS method, method.md);
* ``aligned`` — same per-feature dimensions d_i as ``elem`` (its allocation), but every
  feature keeps the d_i columns ranked highest by one global column order (Σ_i |Ê[i,k]|),
  so the kept dimensions of any two features are nested and a dot product between them
  uses min(d_u, d_i) shared dimensions (``dnis_aligned``);

* ``elem-floor`` — element-wise, but every feature first keeps its largest entry, so no
  feature is left without an embedding (the rest of the budget by magnitude, as ``elem``);

* ``elem-blocknorm`` — element-wise, but the mask is chosen on E ⊙ (α / mean of α over
  the row's block): α's per-block *scale* no longer decides how many entries a block
  keeps, only its within-block shape does (the kept values are still Ê's);

then scored on validation without and with fine-tuning (mask fixed). The overlap of the
kept dimensions of the two interacting features (fields 0 and 1) is reported too.
Every row is appended to ``OUT/ablation.json`` as it finishes (resumable). Test metrics are
recorded but only printed with ``--show-test`` (for the setting chosen on validation).

Example (ML-1M rating, MF, K=64)::

    nice -n 5 .venv/bin/python experiments/dnis_ablation.py --data movielens-1m --task rating \
        --model mf --budgets 0.2,0.05 --out runs/ablation/ml1m-rating-mf
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from mixemb.data import load_dataset
from mixemb.metrics import primary_metric
from mixemb.models import build_model
from mixemb.nn import MaskedEmbedding
from mixemb.prune import aligned_prune, floor_prune, merge_alpha, merged_table, prune, rotate_table
from mixemb.search import SearchConfig, build_search_model, search
from mixemb.train import TrainConfig, evaluate, fit, write_json

# search variants: name -> (warm start, SearchConfig overrides); None = no search (α = 1)
SEARCH_VARIANTS = {
    "nosearch": ("short", None),
    "base": ("short", {}),
    "alr3e-2": ("short", {"alpha_lr": 3e-2}),
    "alr1e-1": ("short", {"alpha_lr": 1e-1}),
    "alr3e-1": ("short", {"alpha_lr": 3e-1}),
    "ep10": ("short", {"search_epochs": 10}),
    "l1=0": ("short", {"l1": 0.0}),
    "l1=1e-4": ("short", {"l1": 1e-4}),
    "l1=1e-3": ("short", {"l1": 1e-3}),
    "warmfull": ("full", {}),
    "warmfull-alr1e-1": ("full", {"alpha_lr": 1e-1}),
    "nosearch-warmfull": ("full", None),
}
PRUNERS = ("elem", "aligned")
# also available: rot-elem / rot-aligned — Ê rotated onto its right singular vectors first
# (Ê V, exact for models that only use dot products of embeddings: MF, FM)


def overlap(mask: torch.Tensor, ids: torch.Tensor) -> tuple[float, float]:
    """Mean shared kept dims of fields 0 and 1, and the fraction of rows sharing none."""
    a, b = mask[ids[:, 0].long()], mask[ids[:, 1].long()]
    shared = (a & b).sum(1).float()
    return float(shared.mean()), float((shared == 0).float().mean())


def empty_rows(mask: torch.Tensor, ids: torch.Tensor) -> tuple[float, float]:
    """Fraction of features with no kept dim, and of validation lookups that hit one."""
    empty = ~mask.any(1)
    return float(empty.float().mean()), float(empty[ids.long()].float().mean())


def masked_model(model, table, mask):
    cfg = dict(model.config)
    emb = MaskedEmbedding(table, mask)
    out = build_model(cfg.pop("name"), embedding=emb, **cfg)
    rest = {k: v for k, v in model.state_dict().items() if not k.startswith("embedding.")}
    out.load_state_dict(rest, strict=False)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="movielens-1m")
    p.add_argument("--task", default="rating")
    p.add_argument("--model", default="mf")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--blocks", type=int, default=10)
    p.add_argument("--budgets", default="0.2,0.05")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup-epochs", type=int, default=2, help="the short warm start")
    p.add_argument("--full-warmup-epochs", type=int, default=20, help="the full warm start")
    p.add_argument("--search-epochs", type=int, default=5)
    p.add_argument("--patience", type=int, default=2)
    p.add_argument("--ft-epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=1024, help="warm start, search, ft")
    p.add_argument("--lr", type=float, default=1e-3, help="warm start, search, ft")
    p.add_argument("--variants", default=",".join(SEARCH_VARIANTS))
    p.add_argument("--pruners", default=",".join(PRUNERS))
    p.add_argument("--no-ft", action="store_true", help="skip fine-tuning (pruned-only rows)")
    p.add_argument(
        "--ft-modes",
        default="pruned",
        help="pruned: fine-tune from the pruned weights; scratch: retrain a fresh model "
        "with the mask fixed (--scratch-epochs)",
    )
    p.add_argument("--scratch-epochs", type=int, default=20)
    p.add_argument("--show-test", action="store_true")
    p.add_argument("--out", default="runs/ablation")
    args = p.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows_path = out / "ablation.json"
    rows = json.loads(rows_path.read_text()) if rows_path.exists() else {}
    torch.manual_seed(args.seed)
    ds = load_dataset(name=args.data, task=args.task, seed=args.seed, min_count=1)
    metric, direction = primary_metric(ds.task, 10)
    base = SearchConfig(
        dim=args.dim,
        num_blocks=args.blocks,
        warmup_epochs=0,
        search_epochs=args.search_epochs,
        patience=args.patience,
        seed=args.seed,
        batch_size=args.batch_size,
        lr=args.lr,
    )
    budgets = [float(b) for b in args.budgets.split(",") if b]
    n, k = ds.num_features, args.dim

    warm: dict[str, dict] = {}

    def warm_state(kind: str) -> dict:
        if kind not in warm:
            path = out / f"warm-{kind}.pt"
            if path.exists():
                warm[kind] = torch.load(path, weights_only=True)
            else:
                epochs = args.warmup_epochs if kind == "short" else args.full_warmup_epochs
                model = build_search_model(ds, args.model, base)
                model.embedding.alpha.requires_grad_(False)
                t0 = time.perf_counter()
                cfg = TrainConfig(
                    epochs=epochs,
                    patience=args.patience,
                    seed=args.seed,
                    batch_size=args.batch_size,
                    lr=args.lr,
                )
                res = fit(model, ds, cfg, log=lambda s: print(f"warm-{kind} {s}"))
                print(f"warm-{kind}: best epoch {res.best_epoch} {time.perf_counter() - t0:.0f}s")
                warm[kind] = copy.deepcopy(model.state_dict())
                torch.save(warm[kind], path)
        return warm[kind]

    def ft_eval(model, table, mask, seed, mode):
        if mode == "pruned":  # fine-tune from the pruned weights
            tuned = masked_model(model, table, mask)
            epochs = args.ft_epochs
        else:  # retrain from scratch with the mask fixed (fresh init, the full epoch budget)
            torch.manual_seed(seed)
            init = torch.empty_like(table)
            torch.nn.init.xavier_normal_(init)
            cfg_m = dict(model.config)
            tuned = build_model(cfg_m.pop("name"), embedding=MaskedEmbedding(init, mask), **cfg_m)
            epochs = args.scratch_epochs
        cfg = TrainConfig(
            epochs=epochs, patience=args.patience, seed=seed, batch_size=args.batch_size, lr=args.lr
        )
        fit(tuned, ds, cfg, log=lambda s: None)
        kw = dict(k=10)
        return evaluate(tuned, ds.valid, ds.task, **kw), evaluate(tuned, ds.test, ds.task, **kw)

    for name in [v for v in args.variants.split(",") if v]:
        kind, overrides = SEARCH_VARIANTS[name]
        model = build_search_model(ds, args.model, base)
        model.load_state_dict(warm_state(kind))
        t0 = time.perf_counter()
        if overrides is not None:
            cfg = replace(base, **overrides)
            res = search(model, ds, cfg, log=lambda s: None, init_bias=False)
            hist = [(h["epoch"], round(h[f"valid_{metric}"], 4)) for h in res.history]
        else:
            hist = []
        search_s = time.perf_counter() - t0
        alpha = model.embedding.alpha.detach()
        searched_valid = evaluate(model, ds.valid, ds.task, k=10)[metric]
        merged = merged_table(model.embedding)
        for budget in budgets:
            keep = round(budget * n * k)
            for pruner in [q for q in args.pruners.split(",") if q]:
                modes = [] if args.no_ft else [m for m in args.ft_modes.split(",") if m]
                key = f"{name}|{budget:g}|{pruner}|ft{0 if args.no_ft else args.ft_epochs}"
                todo = [m for m in modes if f"ft_{m}_valid" not in rows.get(key, {})]
                if key in rows and not todo:
                    continue
                src = merged
                if pruner.startswith("rot-"):
                    src = rotate_table(merged)
                if pruner == "elem-blocknorm":
                    emb = model.embedding
                    scale = alpha / alpha.mean(1, keepdim=True).clamp_min(1e-12)
                    scored, _ = prune(
                        merge_alpha(emb.weight.detach(), scale, emb.boundaries), keep=keep
                    )
                    mask = scored != 0
                    table = merged * mask
                elif pruner == "elem-floor":
                    table, mask = floor_prune(merged, keep)
                elif pruner.endswith("elem"):
                    table, _ = prune(src, keep=keep)
                    mask = table != 0
                else:
                    table, mask = aligned_prune(src, keep)
                pm = masked_model(model, table, mask)
                kw = dict(k=10)
                pv, pt = evaluate(pm, ds.valid, ds.task, **kw), evaluate(pm, ds.test, ds.task, **kw)
                ov, none = overlap(mask, ds.valid.ids)
                empty_features, empty_lookups = empty_rows(mask, ds.valid.ids)
                row = {
                    "variant": name,
                    "budget": budget,
                    "pruner": pruner,
                    "search_valid": searched_valid,
                    "search_hist": hist,
                    "search_s": search_s,
                    "alpha_mean": float(alpha.mean()),
                    "alpha_block_mean": [round(float(x), 3) for x in alpha.mean(1)],
                    "alpha_frac_lt_0.1": float((alpha < 0.1).float().mean()),
                    "overlap": ov,
                    "no_overlap": none,
                    "kept": int(mask.sum()),
                    "empty_features": empty_features,
                    "empty_lookups": empty_lookups,
                    "pruned_valid": pv[metric],
                    "pruned_test": pt[metric],
                }
                row = {**rows.get(key, {}), **row}
                for mode in todo:
                    t1 = time.perf_counter()
                    fv, ft = ft_eval(model, table, mask, args.seed, mode)
                    row[f"ft_{mode}_valid"], row[f"ft_{mode}_test"] = fv[metric], ft[metric]
                    row[f"ft_{mode}_s"] = time.perf_counter() - t1
                    if mode == "pruned":  # the column names of the first version
                        row["ft_valid"], row["ft_test"] = fv[metric], ft[metric]
                rows[key] = row
                write_json(rows, rows_path)
                print(
                    f"{name:18s} b={budget:<5g} {pruner:8s} searched {searched_valid:.4f} "
                    f"α̅ {row['alpha_mean']:.2f} overlap {ov:5.2f} (none {none:.2f}) "
                    f"empty {empty_features:.2f} ({empty_lookups:.2f} of lookups) "
                    f"pruned {pv[metric]:.4f}"
                    + "".join(
                        f" ft-{m} {row[f'ft_{m}_valid']:.4f}"
                        for m in ("pruned", "scratch")
                        if f"ft_{m}_valid" in row
                    ),
                    flush=True,
                )
    print_table(rows, metric, args.show_test)


def _fmt(row: dict, key: str) -> str:
    return f"{row[key]:.4f}" if key in row else "-"


def print_table(rows: dict, metric: str, show_test: bool) -> None:
    head = ["variant", "budget", "pruner", "α mean", "overlap", "valid pruned"]
    head += ["valid ft", "valid scratch"]
    if show_test:
        head += ["test pruned", "test ft", "test scratch"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows.values():
        cells = [
            r["variant"],
            f"{r['budget']:g}",
            r["pruner"],
            f"{r['alpha_mean']:.2f}",
            f"{r['overlap']:.2f}",
            f"{r['pruned_valid']:.4f}",
            *[_fmt(r, f"ft_{m}_valid") for m in ("pruned", "scratch")],
        ]
        if show_test:
            cells += [f"{r['pruned_test']:.4f}"]
            cells += [_fmt(r, f"ft_{m}_test") for m in ("pruned", "scratch")]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
