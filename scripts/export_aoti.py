"""A pruned model for a C++ process: ``torch.export`` → AOTInductor package, plus a batch
and the scores Python gives it, for ``serve_aoti`` (csrc/test/serve_aoti.cpp) to check.

    python scripts/export_aoti.py OUT_DIR [--users N] [--items N] [--dim K]
                                          [--ratio R | --unpruned] [--batch B] [--history L]
                                          [--weights so|blob]

The model is the README's ``Ranker`` (an ``nn.Embedding`` of users, an ``nn.EmbeddingBag``
of history items, an MLP head) at the given sizes. Pruned (the default): made searchable
(``mixemb.searchable``) and pruned to ``ratio`` of its dense fp32 table bytes
(``mixemb.to_ragged``; α untrained, so the entries kept are the largest weights — a
searched model, README "Use it in your own model", prunes the same way). ``--unpruned``
exports the dense model, for comparison. Writes to OUT_DIR:

* ``ranker.pt2``: the AOTInductor package, batch and lookups dynamic; ``--weights so``
  (the default, torch's) puts the weights inside the model's shared library, ``blob``
  beside it in the package as one binary file (``aot_inductor.package_constants_in_so``
  off, ``package_constants_on_disk_format="binary_blob"``: an experimental AOTInductor
  setting in torch 2.13; a C++ process then holds only its own copy of them,
  docs/serving.md);
* ``batch.pt``: ``{"inputs": [users (B,) int64, items (B·L,) int64, offsets (B,) int64],
  "expected": scores (B,) float32}``, the eager model's scores, which the package — run
  here in Python first, and at a second batch size — reproduces bit for bit;
* ``ranker.pt``: the model file a Python server loads (``mixemb.save``'s; the dense
  ``state_dict`` with ``--unpruned``);
* ``config.json``: the sizes, the table bytes and the package's bytes.

Compiling the package takes about a minute on 2 CPU cores (a C++ compiler is needed).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn

import mixemb

# Where the package keeps the weights → the Inductor settings that put them there.
WEIGHTS = {
    "so": {},
    "blob": {
        "aot_inductor.package_constants_in_so": False,
        "aot_inductor.package_constants_on_disk_format": "binary_blob",
    },
}


class Ranker(nn.Module):
    """The README's model: ``forward(users (B,), items (M,), offsets (B,)) -> (B,)``
    float32 logits, from a user row and the mean of the user's history items' rows."""

    def __init__(self, users: int = 500, items: int = 2000, dim: int = 32) -> None:
        super().__init__()
        self.user = nn.Embedding(users, dim)
        self.history = nn.EmbeddingBag(items, dim, mode="mean")
        self.head = nn.Sequential(nn.Linear(2 * dim, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(
        self, users: torch.Tensor, items: torch.Tensor, offsets: torch.Tensor
    ) -> torch.Tensor:
        x = torch.cat([self.user(users), self.history(items, offsets)], 1)
        return self.head(x).squeeze(1)


def make_batch(
    users: int, items: int, batch: int, history: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(users (batch,), items (batch·history,), offsets (batch,)) int64 ids, uniform."""
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randint(0, users, (batch,), generator=g),
        torch.randint(0, items, (batch * history,), generator=g),
        torch.arange(0, batch * history, history),
    )


def table_bytes(model: nn.Module) -> int:
    """Bytes of the model's embedding tables as stored (a ragged table's buffers, or a
    dense weight)."""
    total = 0
    for module in model.modules():
        if isinstance(module, mixemb.RaggedEmbedding):
            total += module.nbytes()
        elif isinstance(module, nn.Embedding | nn.EmbeddingBag):
            total += module.weight.numel() * module.weight.element_size()
    return total


def export_package(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], path: Path, weights: str = "so"
) -> Path:
    """``torch.export`` ``model`` (batch B and lookups M dynamic) and compile it into an
    AOTInductor package at ``path``, its weights where ``weights`` says (``WEIGHTS``)."""
    batch, lookups = torch.export.Dim("batch"), torch.export.Dim("lookups")
    program = torch.export.export(
        model, inputs, dynamic_shapes=({0: batch}, {0: lookups}, {0: batch})
    )
    package = torch._inductor.aoti_compile_and_package(
        program, package_path=str(path), inductor_configs=WEIGHTS[weights]
    )
    return Path(package)


def check_package(package: Path, model: nn.Module, batches: list[tuple[torch.Tensor, ...]]) -> None:
    """Raise SystemExit unless the package, loaded in this process, scores every batch
    bit for bit as the eager model does."""
    served = torch._inductor.aoti_load_package(str(package))
    for inputs in batches:
        got, want = served(*inputs), model(*inputs)
        differ = got.ne(want)
        if differ.any():
            first = differ.nonzero().flatten()[:8].tolist()
            raise SystemExit(
                f"{package}: {int(differ.sum())} of {want.numel()} scores differ from the "
                f"eager model's (batch {want.numel()}), first at {first}, max |diff| "
                f"{float((got - want).abs().max()):.3g}"
            )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder the package and its batch go to")
    parser.add_argument("--users", type=int, default=500, help="rows of the user table")
    parser.add_argument("--items", type=int, default=2000, help="rows of the history table")
    parser.add_argument("--dim", type=int, default=32, help="embedding dimension K")
    parser.add_argument("--ratio", type=float, default=0.2, help="budget: share of dense bytes")
    parser.add_argument("--unpruned", action="store_true", help="export the dense model")
    parser.add_argument("--batch", type=int, default=64, help="users in the saved batch")
    parser.add_argument("--history", type=int, default=4, help="history items per user")
    parser.add_argument(
        "--weights", choices=tuple(WEIGHTS), default="so", help="where the package keeps them"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("users", "items", "dim", "batch", "history"):
        if getattr(args, name) < 2:  # export specializes a size-1 dimension
            raise SystemExit(f"--{name} must be at least 2, got {getattr(args, name)}")
    if not 0 < args.ratio <= 1:
        raise SystemExit(f"--ratio must be in (0, 1], got {args.ratio}")

    torch.manual_seed(args.seed)
    model = Ranker(args.users, args.items, args.dim)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.unpruned:
        torch.save(model.state_dict(), args.out / "ranker.pt")
    else:
        model = mixemb.searchable(model, num_blocks=10)
        print(mixemb.to_ragged(model, ratio=args.ratio))
        mixemb.save(model, args.out / "ranker.pt")
    model.eval()

    inputs = make_batch(args.users, args.items, args.batch, args.history, args.seed)
    other = make_batch(args.users, args.items, args.batch + 3, args.history + 1, args.seed + 1)
    with torch.inference_mode():
        expected = model(*inputs)
    start = time.perf_counter()
    package = export_package(model, inputs, args.out / "ranker.pt2", args.weights)
    seconds = time.perf_counter() - start
    with torch.inference_mode():
        check_package(package, model, [inputs, other])
    torch.save({"inputs": list(inputs), "expected": expected}, args.out / "batch.pt")
    config = {
        "users": args.users,
        "items": args.items,
        "dim": args.dim,
        "pruned": not args.unpruned,
        "ratio": None if args.unpruned else args.ratio,
        "batch": args.batch,
        "history": args.history,
        "weights": args.weights,
        "table_bytes": table_bytes(model),
        "package_bytes": package.stat().st_size,
        "compile_s": round(seconds, 1),
    }
    (args.out / "config.json").write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
    print(
        f"{package}: {config['package_bytes']:,} B, compiled in {seconds:.0f} s; "
        f"tables {config['table_bytes']:,} B; Python's scores match"
    )
    return config


if __name__ == "__main__":
    main()
