"""In-backward optimizer for the DNIS table: the table is updated while the gradient is
being reduced, never materialised (the pattern of FBGEMM's table-batched embeddings).

Use::

    opt = FusedOptimizer(weight, "rowwise_adagrad", lr=0.05)
    out = soft_select_lookup(weight, alpha, boundaries, ids, fused_optimizer=opt)
    loss(out).backward()      # weight's looked-up rows are updated here; weight.grad stays None
    opt.set_lr(0.01)          # lr is a device tensor: changing it does not recompile

weight must have requires_grad=True (that is what makes autograd call the backward);
keep it out of the dense optimizer. α's gradient (and values') is computed as usual,
before the table is touched. Eager mode only: the in-place update is a side effect
that torch.compile should not trace through.

The op (``mixemb.ops.soft_select_lookup``) reads only ``kind``, ``lr``, ``eps`` and
``state``; this class is where that state is created, checked, moved and saved.
"""

from __future__ import annotations

import torch

KINDS = ("sgd", "rowwise_adagrad")


class FusedOptimizer:
    """SGD or row-wise Adagrad applied inside ``soft_select_lookup``'s backward.

    weight: (N, K) the table it updates. kind: "sgd" or "rowwise_adagrad".
    lr: learning rate (default 0.01), stored as a (1,) float32 tensor on weight's device.
    eps: Adagrad's stabilizer (default 1e-8).
    state: (N,) float32 accumulator of mean_k g² per row (rowwise_adagrad; empty for sgd).
    """

    def __init__(
        self, weight: torch.Tensor, kind: str = "sgd", lr: float = 0.01, eps: float = 1e-8
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if lr < 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        self.kind, self.eps = kind, float(eps)
        self.lr = torch.tensor([float(lr)], dtype=torch.float32, device=weight.device)
        rows = weight.shape[0] if kind == "rowwise_adagrad" else 0
        self.state = torch.zeros(rows, dtype=torch.float32, device=weight.device)

    def set_lr(self, lr: float) -> None:
        self.lr.fill_(float(lr))

    def state_dict(self) -> dict:
        return {"kind": self.kind, "eps": self.eps, "lr": self.lr.clone(), "state": self.state}

    def load_state_dict(self, sd: dict) -> None:
        if sd["kind"] != self.kind:
            raise ValueError(f"state is for {sd['kind']!r}, this optimizer is {self.kind!r}")
        if sd["state"].shape != self.state.shape:
            raise ValueError(f"state shape {tuple(sd['state'].shape)} != {tuple(self.state.shape)}")
        self.eps = float(sd["eps"])
        self.lr.copy_(sd["lr"])
        self.state.copy_(sd["state"])

    def __repr__(self) -> str:
        return f"FusedOptimizer({self.kind!r}, lr={float(self.lr)}, eps={self.eps})"
