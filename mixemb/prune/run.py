"""What ``mixemb prune`` does: a searched run → one pruned file on disk.

``prune_run`` turns the budget into a number of entries, prunes with :func:`to_ragged`
(the function any model is pruned with), optionally fine-tunes, and writes the file
that ``mixemb evaluate`` and :func:`mixemb.prune.load_pruned` read.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

from mixemb.nn import RaggedEmbedding
from mixemb.prune.budget import keep_count, metadata_bytes, ragged_bytes
from mixemb.prune.files import save_pruned
from mixemb.prune.finetune import finetune_pruned, to_ragged_model
from mixemb.prune.pruners import PruneReport
from mixemb.prune.to_ragged import to_ragged
from mixemb.quant import VALUE_DTYPES, value_bytes
from mixemb.ragged import RaggedTable, expand_bits
from mixemb.search.run import load_searched
from mixemb.train import TrainConfig, evaluate
from mixemb.train.checkpoint import check_writable
from mixemb.train.run import load_from_spec
from mixemb.train.saved import saved_dataset_spec


def budget_entries(
    merged: torch.Tensor,
    *,
    keep: int | None = None,
    ratio: float | None = None,
    nbytes: int | None = None,
    tau: float | None = None,
    dtype: str = "fp32",
) -> int:
    """How many entries of the merged table ``merged`` (N, K) float the CLI's budget keeps,
    from exactly one of: keep (entries), ratio (of N·K), nbytes (the ragged table's
    stored bytes, metadata included, values in ``dtype``), tau (the non-zero |Ê| >= tau:
    the largest ones, so a count of them keeps exactly them). Raises InfeasibleBudget
    when nbytes does not hold the metadata."""
    if sum(x is not None for x in (keep, ratio, nbytes, tau)) != 1:
        raise ValueError("give exactly one budget: keep, ratio, nbytes or tau")
    if tau is not None:
        return int(((merged.abs() >= tau) & (merged != 0)).sum())
    n, k = merged.shape
    if nbytes is not None:
        meta = metadata_bytes("ragged", n, k, value_dtype=dtype)
        return keep_count(n * k, nbytes=nbytes, bytes_per_entry=value_bytes(dtype), metadata=meta)
    return keep_count(n * k, keep=keep, ratio=ratio)


def prune_run(
    searched: str | Path,
    out: str | Path,
    *,
    keep: int | None = None,
    ratio: float | None = None,
    nbytes: int | None = None,
    tau: float | None = None,
    dtype: str = "fp32",
    finetune_epochs: int = 0,
    data_file: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Merge α, prune to the budget, (fine-tune), export one pruned file; returns the report.

    The budget fixes how many entries are kept (:func:`budget_entries`); :func:`to_ragged`
    keeps that many of the largest |Ê| (ties to the lower index), stored in ``dtype``.
    data_file: the data file of a search run on a file of yours (a path stored in the
        searched file is never opened). Raises ValueError when the pruned model's metrics
        are not finite (nothing is written then).
    """
    if dtype not in VALUE_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(VALUE_DTYPES)}, got {dtype!r}")
    if tau is not None and not (math.isfinite(tau) and tau >= 0):
        raise ValueError(f"tau must be a finite number >= 0, got {tau}")
    if finetune_epochs < 0:
        raise ValueError(f"finetune_epochs must be >= 0, got {finetune_epochs}")
    t0 = time.perf_counter()
    out = Path(out)
    check_writable(out.parent)
    model, obj = load_searched(searched)
    spec = saved_dataset_spec(searched, obj.get("dataset_spec"), data_file)
    boundaries, merged = model.embedding.boundaries, model.embedding.merged_weight()
    n, k = merged.shape
    entries = budget_entries(merged, keep=keep, ratio=ratio, nbytes=nbytes, tau=tau, dtype=dtype)
    if entries:
        budget = ragged_bytes(n, k, entries, dtype)
        threshold = to_ragged(model, nbytes=budget, value_dtype=dtype).threshold
    else:  # to_ragged refuses a budget without one value: the table is empty
        empty = RaggedTable.from_dense(torch.zeros_like(merged), dtype=dtype)
        model.embedding = RaggedEmbedding(empty, out_dtype=torch.float32)
        threshold = math.inf
    mask = expand_bits(model.embedding.masks, k)
    report = PruneReport(nnz=int(mask.sum()), numel=n * k, tau=threshold, dims=mask.sum(1))
    dataset = load_from_spec(spec)
    sc = obj["search_config"]
    if finetune_epochs > 0:
        # the search's own batch size, learning rate and patience, on the CPU
        config = TrainConfig(
            epochs=finetune_epochs,
            batch_size=sc["batch_size"],
            lr=sc["lr"],
            patience=sc["patience"],
            seed=sc["seed"],
            k=sc["k"],
        )
        pruned = torch.where(mask, merged, torch.zeros((), dtype=merged.dtype))
        serving = finetune_pruned(dataset, model, pruned, config, log)
        if dtype != "fp32":
            serving = to_ragged_model(
                serving, serving.embedding.table.to_dense(), value_dtype=dtype
            )
    else:
        serving = model.eval()
    k_eval = sc.get("k", 10)
    metrics = {
        split: evaluate(serving, getattr(dataset, split), dataset.task, k=k_eval)
        for split in ("valid", "test")
    }
    bad = [
        f"{s} {m} {v}" for s, row in metrics.items() for m, v in row.items() if not math.isfinite(v)
    ]
    if bad:
        raise ValueError(f"the pruned model's {bad[0]} is not finite; nothing saved to {out}")
    info = {
        "nnz": report.nnz,
        "ratio_of_uniform": report.ratio,
        "tau": report.tau,
        "stored_bytes": serving.embedding.nbytes(),
        "uniform_dense_bytes": n * k * 4,
        "dim_histogram": report.dim_histogram(),
        "block_mean_dims": report.block_mean_dims(boundaries),
        "dtype": dtype,
        "finetune_epochs": finetune_epochs,
        "valid": metrics["valid"],
        "test": metrics["test"],
        "seconds": time.perf_counter() - t0,
        "k": k_eval,
    }
    save_pruned(
        serving,
        out,
        encoder=obj["encoder"],
        dataset_spec=obj["dataset_spec"],
        report={k: v for k, v in info.items() if k != "dim_histogram"},
    )
    return info
