"""``RaggedTable``: a pruned embedding table that stores only its kept values.

Format (version 1), for N rows of maximum dimension K, W = ceil(K / 64) mask words:

* ``masks``  (N, W) int64 — bit j of word w is set when dimension 64·w + j is kept;
* ``values`` (nnz,) float32/float16/bfloat16 — kept values, row after row, dimensions
  in increasing order within a row;
* ``group_offsets`` (ceil(N / G) + 1,) int64 — index in ``values`` of the first value
  of each group of G consecutive rows (G = ``group_size``, default 16); the last entry
  is nnz.

A row's first value sits at ``group_offsets[row // G]`` plus the popcounts of the masks
of the rows before it in its group; a kept dimension's slot adds the popcount of the
row's mask bits below it. Metadata is 8·W + 8/G bytes per row: 8.5 B at K ≤ 64 with
G = 16, against 256 B per row for a padded fp32 K = 64 table. The alternative — one
int64 offset per row plus a uint8 column index per kept value — costs 8 + d bytes per
row for a row keeping d dimensions, i.e. more than the mask format once d ≥ 1.
"""

from __future__ import annotations

import math

import torch

FORMAT_VERSION = 1
_BITS = torch.arange(64, dtype=torch.int64)


def expand_bits(masks: torch.Tensor, dim: int) -> torch.Tensor:
    """(..., W) int64 masks → (..., dim) bool: whether each dimension is kept."""
    bits = (masks.unsqueeze(-1) >> _BITS.to(masks.device)) & 1
    return bits.reshape(*masks.shape[:-1], masks.shape[-1] * 64)[..., :dim].bool()


def popcount64(x: torch.Tensor) -> torch.Tensor:
    """Set bits of each int64 element (SWAR; arithmetic shifts are masked so the sign bit
    counts like any other)."""
    x = x - ((x >> 1) & 0x5555555555555555)
    x = (x & 0x3333333333333333) + ((x >> 2) & 0x3333333333333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0F
    return (x * 0x0101010101010101) >> 56 & 0x7F


def _pack_bits(present: torch.Tensor) -> torch.Tensor:
    """(N, K) bool → (N, ceil(K/64)) int64 masks."""
    n, k = present.shape
    words = max(math.ceil(k / 64), 1)
    padded = torch.zeros(n, words * 64, dtype=torch.int64, device=present.device)
    padded[:, :k] = present.to(torch.int64)
    shifted = padded.reshape(n, words, 64) << _BITS.to(present.device)
    # Bits are disjoint, so a sum is an OR (bit 63 wraps to the sign bit, as intended).
    return shifted.sum(-1)


class RaggedTable:
    """Kept values of a pruned (N, K) table plus the metadata that places them.

    Build with :meth:`from_dense` (zeros are pruned entries). Attributes: ``masks``,
    ``values``, ``group_offsets`` (see the module docstring), ``num_embeddings``,
    ``embedding_dim``, ``group_size``.
    """

    def __init__(
        self,
        masks: torch.Tensor,
        values: torch.Tensor,
        group_offsets: torch.Tensor,
        embedding_dim: int,
        group_size: int = 16,
        *,
        validate: bool = True,
    ) -> None:
        self.masks, self.values, self.group_offsets = masks, values, group_offsets
        self.embedding_dim, self.group_size = int(embedding_dim), int(group_size)
        if validate:
            self.validate()

    @classmethod
    def from_dense(
        cls, pruned: torch.Tensor, *, group_size: int = 16, dtype: torch.dtype | None = None
    ) -> RaggedTable:
        """Store the non-zero entries of ``pruned`` (N, K); ``dtype`` casts the values."""
        if pruned.dim() != 2:
            raise ValueError(f"pruned must be (N, K), got shape {tuple(pruned.shape)}")
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        present = pruned != 0
        values = pruned[present]  # row-major: rows in order, dims increasing
        if dtype is not None:
            values = values.to(dtype)
        counts = present.sum(1)
        n = pruned.shape[0]
        starts = torch.zeros(n + 1, dtype=torch.int64, device=pruned.device)
        starts[1:] = counts.cumsum(0)
        group_offsets = starts[torch.arange(0, n + group_size, group_size).clamp(max=n)]
        group_offsets = group_offsets[: math.ceil(n / group_size) + 1]
        return cls(_pack_bits(present), values, group_offsets, pruned.shape[1], group_size)

    @property
    def num_embeddings(self) -> int:
        return self.masks.shape[0]

    @property
    def nnz(self) -> int:
        return self.values.numel()

    def validate(self) -> None:
        """Check shapes and offsets; raises ValueError naming what is inconsistent."""
        n, k = self.masks.shape[0], self.embedding_dim
        words = max(math.ceil(k / 64), 1)
        if self.masks.dim() != 2 or self.masks.shape[1] != words or self.masks.dtype != torch.int64:
            raise ValueError(f"masks must be ({n}, {words}) int64, got {tuple(self.masks.shape)}")
        groups = math.ceil(n / self.group_size) + 1
        if self.group_offsets.shape != (groups,) or self.group_offsets.dtype != torch.int64:
            raise ValueError(
                f"group_offsets must be ({groups},) int64, got {tuple(self.group_offsets.shape)}"
            )
        kept = self.row_dims()
        if int(kept.sum()) != self.values.numel():
            raise ValueError(
                f"masks keep {int(kept.sum())} values but {self.values.numel()} are stored"
            )
        starts = torch.zeros(n + 1, dtype=torch.int64)
        starts[1:] = kept.cpu().cumsum(0)
        idx = torch.arange(0, n + self.group_size, self.group_size).clamp(max=n)[:groups]
        if not torch.equal(starts[idx], self.group_offsets.cpu()):
            raise ValueError("group_offsets do not match the masks' popcounts")

    def row_dims(self) -> torch.Tensor:
        """(N,) int64: kept dimensions per row."""
        return popcount64(self.masks).sum(1)

    def row_offsets(self) -> torch.Tensor:
        """(N,) int64: index in ``values`` of each row's first value (derived, not stored)."""
        dims = self.row_dims()
        rows = torch.arange(self.num_embeddings, device=dims.device)
        group_start = rows - rows % self.group_size
        within = dims.cumsum(0) - dims - (dims.cumsum(0) - dims)[group_start]
        return self.group_offsets[rows // self.group_size] + within

    def to_dense(self) -> torch.Tensor:
        """(N, K) with zeros at pruned entries."""
        present = expand_bits(self.masks, self.embedding_dim)
        dense = torch.zeros(present.shape, dtype=self.values.dtype, device=self.values.device)
        dense[present] = self.values
        return dense

    def nbytes(self) -> int:
        """Bytes of every stored tensor (values and metadata)."""
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"masks": self.masks, "values": self.values, "group_offsets": self.group_offsets}

    def state_dict(self) -> dict:
        """Plain dict (tensors, ints) that loads with ``torch.load(weights_only=True)``."""
        return {
            "format_version": FORMAT_VERSION,
            "embedding_dim": self.embedding_dim,
            "group_size": self.group_size,
            **self.tensors(),
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> RaggedTable:
        version = state.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"unsupported ragged table format version {version!r}")
        return cls(
            state["masks"],
            state["values"],
            state["group_offsets"],
            state["embedding_dim"],
            state["group_size"],
        )

    def to(self, device) -> RaggedTable:
        return RaggedTable(
            self.masks.to(device),
            self.values.to(device),
            self.group_offsets.to(device),
            self.embedding_dim,
            self.group_size,
        )

    def __repr__(self) -> str:
        return (
            f"RaggedTable({self.num_embeddings}, {self.embedding_dim}, nnz={self.nnz}, "
            f"dtype={self.values.dtype}, nbytes={self.nbytes()})"
        )
