"""In-backward optimizer for the DNIS table: the table is updated while the gradient is
being reduced, never materialised (the pattern of FBGEMM's table-batched embeddings).

Use::

    opt = FusedOptimizer(weight, "rowwise_adagrad", lr=0.05)
    out = soft_select_lookup(weight, alpha, boundaries, ids, fused_optimizer=opt)
    loss(out).backward()      # weight's looked-up rows are updated here; weight.grad stays None
    opt.set_lr(0.01)          # lr is a device tensor: changing it does not recompile

weight must have requires_grad=True (that is what makes autograd call the backward);
keep it out of the dense optimizer. It may be any (N, K) tensor with unit column stride,
a column slice of a wider table included: that tensor itself is updated. α's gradient
(and values') is computed as usual, before the lookup's update. Eager mode only: the
in-place update is a side effect that torch.compile should not trace through.

A table may be looked up several times in one step (two features sharing it): every
lookup's backward applies its own update, one after another in the order autograd runs
them, and computes its α gradient from the table as the earlier backward calls of the
step left it (``mixemb.ops.soft_select`` documents the rule).

Rounding: the update is computed in fp32. An fp16 / bf16 table rounds the result
stochastically by default (``stochastic_rounding=True``, as FBGEMM does for half
tables): to the neighbour above or below with probabilities that make it unbiased, so
updates below half an ulp accumulate in expectation instead of vanishing as they do with
round-to-nearest. fp32 / fp64 tables round to nearest whatever the setting. The random
stream is Philox keyed by a seed drawn once from torch's default generator at the first
stochastic update (``torch.manual_seed`` makes a run reproducible; an fp32 table never
draws, so it leaves the caller's random stream as it was) and advanced by one per
stochastic update; ``state_dict`` keeps it, so a resumed run continues the stream.

The op (``mixemb.ops.soft_select_lookup``) reads ``kind``, ``lr``, ``eps`` and ``state``
and calls ``rounding``; this class is where that state is created, checked, moved and
saved.
"""

from __future__ import annotations

import torch

KINDS = ("sgd", "rowwise_adagrad")
#: tables whose updates ``stochastic_rounding`` applies to
HALF_DTYPES = (torch.float16, torch.bfloat16)
#: seeds are in [0, SEED_RANGE): one int32 kernel argument type, whatever the step
SEED_RANGE = 2**31 - 1


class FusedOptimizer:
    """SGD or row-wise Adagrad applied inside ``soft_select_lookup``'s backward.

    weight: (N, K) the table it updates. kind: "sgd" or "rowwise_adagrad".
    lr: learning rate (default 0.01), stored as a (1,) float32 tensor on weight's device.
    eps: Adagrad's stabilizer (default 1e-8).
    stochastic_rounding: round fp16 / bf16 tables' updates stochastically (default True;
        no effect on fp32 / fp64 tables).
    state: (N,) float32 accumulator of mean_k g² per row (rowwise_adagrad; empty for sgd).
    seed, updates: the rounding stream's key (drawn from torch's default generator at the
        first stochastic update; None before it) and the number of stochastic updates so
        far (the next update's key is their sum).
    """

    def __init__(
        self,
        weight: torch.Tensor,
        kind: str = "sgd",
        lr: float = 0.01,
        eps: float = 1e-8,
        *,
        stochastic_rounding: bool = True,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if lr < 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        self.kind, self.eps = kind, float(eps)
        self.stochastic_rounding = bool(stochastic_rounding)
        self.lr = torch.tensor([float(lr)], dtype=torch.float32, device=weight.device)
        rows = weight.shape[0] if kind == "rowwise_adagrad" else 0
        self.state = torch.zeros(rows, dtype=torch.float32, device=weight.device)
        self.seed: int | None = None  # drawn at the first stochastic update
        self.updates = 0

    def set_lr(self, lr: float) -> None:
        self.lr.fill_(float(lr))

    def rounding(self, dtype: torch.dtype) -> tuple[bool, int]:
        """(stochastic, seed) for the next update of a table of ``dtype``: stochastic for
        fp16 / bf16 with ``stochastic_rounding``, the seed then advanced (host ints only:
        no device sync); (False, 0) otherwise."""
        if not (self.stochastic_rounding and dtype in HALF_DTYPES):
            return False, 0
        if self.seed is None:
            self.seed = int(torch.randint(0, SEED_RANGE, ()))  # the default CPU generator
        seed = (self.seed + self.updates) % SEED_RANGE
        self.updates += 1
        return True, seed

    def state_dict(self) -> dict:
        return {
            "kind": self.kind, "eps": self.eps, "lr": self.lr.clone(), "state": self.state,
            "stochastic_rounding": self.stochastic_rounding, "seed": self.seed,
            "updates": self.updates,
        }  # fmt: skip

    def load_state_dict(self, sd: dict) -> None:
        if sd["kind"] != self.kind:
            raise ValueError(f"state is for {sd['kind']!r}, this optimizer is {self.kind!r}")
        if sd["state"].shape != self.state.shape:
            raise ValueError(f"state shape {tuple(sd['state'].shape)} != {tuple(self.state.shape)}")
        self.eps = float(sd["eps"])
        self.lr.copy_(sd["lr"])
        self.state.copy_(sd["state"])
        self.stochastic_rounding = bool(sd.get("stochastic_rounding", self.stochastic_rounding))
        seed = sd.get("seed", self.seed)
        self.seed = None if seed is None else int(seed)
        self.updates = int(sd.get("updates", self.updates))

    def __repr__(self) -> str:
        return (
            f"FusedOptimizer({self.kind!r}, lr={float(self.lr)}, eps={self.eps}, "
            f"stochastic_rounding={self.stochastic_rounding})"
        )
