"""``SoftSelectEmbedding``: an embedding table whose dimensions are scaled by a learned α.

Feature ids are ordered by descending training frequency, so a frequency block is a
contiguous id range given by ``boundaries``; α has one row per block.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mixemb.nn.fused_optimizer import FusedOptimizer
from mixemb.ops import soft_select_lookup
from mixemb.ops.soft_select import check_boundaries
from mixemb.reference import equal_boundaries


def make_boundaries(
    num_embeddings: int,
    *,
    num_blocks: int | None = None,
    fractions: Sequence[float] | None = None,
    counts: Sequence[int] | None = None,
    thresholds: Sequence[float] | None = None,
    frequencies: torch.Tensor | Sequence[int] | None = None,
) -> torch.Tensor:
    """Block boundaries (L+1,) int64 over frequency-sorted ids, from exactly one recipe.

    num_blocks: L blocks of near-equal size, larger first (the authors' MovieLens choice,
        L=10).
    fractions: cumulative fractions of N where blocks end, e.g. [0.1, 0.3, 1.0].
    counts: block sizes, summing to N.
    thresholds: decreasing minimum frequencies (e.g. [1e5, 1e4, 1e3]: features seen
        ≥1e5 times, then ≥1e4, …, then the rest — the authors' Criteo split); needs
        ``frequencies`` (N,), non-increasing. Empty blocks are dropped.
    """
    given = [x is not None for x in (num_blocks, fractions, counts, thresholds)]
    if sum(given) != 1:
        raise ValueError("give exactly one of num_blocks, fractions, counts, thresholds")
    n = int(num_embeddings)
    if n < 1:
        raise ValueError(f"num_embeddings must be >= 1, got {n}")
    if num_blocks is not None:
        if not 1 <= num_blocks <= n:
            raise ValueError(f"num_blocks must be in [1, {n}], got {num_blocks}")
        return equal_boundaries(n, num_blocks)
    elif fractions is not None:
        if any(not 0 < f <= 1 for f in fractions) or list(fractions) != sorted(fractions):
            raise ValueError(f"fractions must be increasing in (0, 1], got {list(fractions)}")
        cuts = [round(n * f) for f in fractions]
        if cuts[-1] != n:
            cuts.append(n)
    elif counts is not None:
        if any(c < 1 for c in counts) or sum(counts) != n:
            raise ValueError(f"counts must be >= 1 and sum to {n}, got {list(counts)}")
        cuts = torch.tensor(list(counts)).cumsum(0).tolist()
    else:
        if frequencies is None:
            raise ValueError("thresholds need the per-id frequencies")
        freq = torch.as_tensor(frequencies)
        if freq.numel() != n:
            raise ValueError(f"frequencies has {freq.numel()} entries, expected {n}")
        if list(thresholds) != sorted(thresholds, reverse=True):
            raise ValueError(f"thresholds must be decreasing, got {list(thresholds)}")
        # ids are sorted by descending frequency: the ids seen >= t times are a prefix.
        cuts = [int((freq >= t).sum()) for t in thresholds] + [n]
    edges = [0] + [c for c in cuts if c > 0]
    edges = sorted(set(edges))
    return torch.tensor(edges, dtype=torch.int64)


class WeightShape:
    """The sizes of a module with a ``weight`` (N, K)."""

    @property
    def num_embeddings(self) -> int:
        return self.weight.shape[0]

    @property
    def embedding_dim(self) -> int:
        return self.weight.shape[1]


class TableShape(WeightShape):
    """The sizes of a module with ``weight`` (N, K) and ``alpha`` (L, K)."""

    @property
    def num_blocks(self) -> int:
        return self.alpha.shape[0]


class SoftSelectEmbedding(TableShape, nn.Module):
    """E[ids] ⊙ α[block(ids)] — the DNIS search-time embedding layer.

    weight: (N, K) parameter, Xavier-normal init; alpha: (L, K) parameter, init 1;
    boundaries: (L+1,) int64 buffer. ``forward(ids (...), values (...) | None) -> (..., K)``.
    normalize, l1, eps: how α's gradient is post-processed (see ``soft_select_lookup``).
    sparse: weight gradient as sparse rows (use with SparseAdam / SGD).
    backend: "auto" (Triton kernels on CUDA, the reference on CPU), "triton" or
        "reference" (see ``mixemb.ops.soft_select_lookup``).
    deterministic: bitwise-reproducible weight gradients on the Triton path (default).
    ``use_fused_optimizer(kind, lr)`` makes the backward update the table in place
    (SGD or row-wise Adagrad, FBGEMM-style); the table then gets no ``.grad``.
    A searchable twin like ``mixemb.searchable``'s (``searchable_modules`` finds it), so
    :func:`mixemb.dnis` searches it and :func:`mixemb.to_ragged` prunes it.
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        boundaries: torch.Tensor | Sequence[int],
        *,
        normalize: bool = True,
        l1: float = 0.0,
        eps: float = 1e-8,
        sparse: bool = False,
        backend: str = "auto",
        deterministic: bool = True,
    ) -> None:
        super().__init__()
        b = torch.as_tensor(boundaries, dtype=torch.int64)
        if b.dim() != 1:
            raise ValueError(f"boundaries must be (L+1,), got shape {tuple(b.shape)}")
        check_boundaries(b, num_embeddings)
        self.weight = nn.Parameter(torch.empty(num_embeddings, embedding_dim))
        nn.init.xavier_normal_(self.weight)
        self.alpha = nn.Parameter(torch.ones(b.numel() - 1, embedding_dim))
        self.register_buffer("boundaries", b)
        self.normalize, self.l1, self.eps = normalize, l1, eps
        self.sparse, self.backend, self.deterministic = sparse, backend, deterministic
        self.fused_optimizer = None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # checked here, once, since the CUDA forward cannot check them without a host sync
        b = state_dict.get(prefix + "boundaries")
        if isinstance(b, torch.Tensor) and b.dim() == 1 and not b.is_floating_point():
            try:
                check_boundaries(b, self.num_embeddings)
            except ValueError as err:
                raise ValueError(f"{prefix}boundaries in the state: {err}") from None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def has_frequencies(self) -> bool:
        """Always True: the ids are frequency-sorted, so the boundaries are the blocks (the
        searchable twins' contract, read by :func:`mixemb.dnis`)."""
        return True

    def merged_weight(self) -> torch.Tensor:
        """(N, K) weight ⊙ alpha[block(row)] in the weight's dtype, detached: the table the
        lookups see (what :func:`mixemb.to_ragged` prunes)."""
        with torch.no_grad():
            sizes = (self.boundaries[1:] - self.boundaries[:-1]).to(self.weight.device)
            return self.weight * torch.repeat_interleave(
                self.alpha.to(self.weight.dtype), sizes, dim=0
            )

    def use_fused_optimizer(
        self,
        kind: str = "sgd",
        lr: float = 0.01,
        eps: float = 1e-8,
        *,
        stochastic_rounding: bool = True,
    ) -> FusedOptimizer:
        """Update the table inside the backward from now on; returns the optimizer
        (``set_lr`` changes its rate; ``stochastic_rounding``: see ``FusedOptimizer``). Its
        state and lr are buffers (saved with the module). Exclude ``weight`` from any other
        optimizer."""
        opt = FusedOptimizer(
            self.weight, kind, lr=lr, eps=eps, stochastic_rounding=stochastic_rounding
        )
        self.register_buffer("fused_lr", opt.lr)
        self.register_buffer("fused_state", opt.state)
        self.fused_optimizer = opt
        return opt

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        if self.fused_optimizer is not None:  # keep the optimizer on the moved buffers
            self.fused_optimizer.lr, self.fused_optimizer.state = self.fused_lr, self.fused_state
        return out

    def forward(self, ids: torch.Tensor, values: torch.Tensor | None = None) -> torch.Tensor:
        return soft_select_lookup(
            self.weight,
            self.alpha,
            self.boundaries,
            ids,
            values,
            normalize=self.normalize,
            l1=self.l1,
            eps=self.eps,
            sparse=self.sparse,
            backend=self.backend,
            deterministic=self.deterministic,
            fused_optimizer=self.fused_optimizer,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.num_embeddings}, {self.embedding_dim}, blocks={self.num_blocks}, "
            f"normalize={self.normalize}, l1={self.l1}, sparse={self.sparse}, "
            f"backend={self.backend!r}"
            + ("" if self.fused_optimizer is None else f", fused={self.fused_optimizer.kind!r}")
        )
