"""``RaggedEmbeddingBag``: ``nn.EmbeddingBag`` served from a pruned table."""

from __future__ import annotations

import torch

from mixemb.nn.ragged import RaggedEmbedding
from mixemb.nn.searchable import check_per_sample_weights, pool
from mixemb.ops import ragged_bag
from mixemb.ops.ragged import check_kernel_variant
from mixemb.ragged import RaggedTable

MODES = ("sum", "mean", "max")


class RaggedEmbeddingBag(RaggedEmbedding):
    """Pooled lookups over a :class:`RaggedTable` with ``nn.EmbeddingBag``'s forward:
    ``forward(input, offsets=None, per_sample_weights=None) -> (B, K)`` in the table's
    rows dtype (float32 for an int8 table).

    input: (M,) int32/int64 ids with ``offsets`` (B,) bag starts (B+1 entries with
        include_last_offset), starting at 0 and non-decreasing; or (B, L) ids, B bags of
        L ids each (offsets None).
    per_sample_weights: default None; float, input's shape, mode "sum" only.

    Empty bags give zeros; ids equal to ``padding_idx`` are left out of their bag (and of
    mean's count). sum and mean run the ``ragged_bag`` op; max gathers the rows
    (``ragged_gather``) and takes each bag's maximum. The table's tensors are buffers, as
    in :class:`RaggedEmbedding`, whose state loading validates them.

    table: the RaggedTable served (N rows, maximum dimension K).
    mode: default "mean" (as nn.EmbeddingBag); or "sum", "max".
    padding_idx: default None; an id in [-N, N) (negative counts from N, as in torch).
    include_last_offset: default False; offsets hold B+1 entries, the last M.
    out_dtype: default None; the output's float dtype (as :class:`RaggedEmbedding`).
    bag_kernel, one_warp, lookups_at_once, backend: kernel variants of ``ragged_bag``
        (``mixemb.ops.ragged``); one_warp, lookups_at_once and backend also of the max
        mode's ``ragged_gather``.
    """

    def __init__(
        self,
        table: RaggedTable,
        *,
        mode: str = "mean",
        padding_idx: int | None = None,
        include_last_offset: bool = False,
        out_dtype: torch.dtype | None = None,
        bag_kernel: str = "halves",
        one_warp: bool = False,
        lookups_at_once: int | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__(
            table,
            out_dtype=out_dtype,
            one_warp=one_warp,
            lookups_at_once=lookups_at_once,
            backend=backend,
        )
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        check_kernel_variant(lookups_at_once, bag_kernel)
        n = table.num_embeddings
        if padding_idx is not None:
            if type(padding_idx) is not int or not -n <= padding_idx < n:
                raise ValueError(f"padding_idx must be an int in [{-n}, {n}), got {padding_idx!r}")
            padding_idx %= n
        self.mode = mode
        self.padding_idx = padding_idx
        self.include_last_offset = bool(include_last_offset)
        self.bag_kernel = bag_kernel

    def forward(
        self,
        input: torch.Tensor,
        offsets: torch.Tensor | None = None,
        per_sample_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        ids, offsets, weights, last = self._flatten(input, offsets, per_sample_weights)
        if self.mode == "max":
            return self._max(ids, offsets, last)
        kept = None if self.padding_idx is None else ids != self.padding_idx
        if kept is not None:
            ones = torch.ones((), dtype=torch.float32, device=ids.device)
            weights = kept * (ones if weights is None else weights)
        out = ragged_bag(
            self.table,
            ids,
            offsets,
            mode="sum" if kept is not None else self.mode,
            per_sample_weights=weights,
            include_last_offset=last,
            bag_kernel=self.bag_kernel,
            one_warp=self.one_warp,
            lookups_at_once=self.lookups_at_once,
            backend=self.backend,
        )
        if kept is not None and self.mode == "mean":
            # the op summed the kept rows; mean divides by the bag's kept count
            running = torch.zeros(ids.numel() + 1, dtype=torch.int64, device=ids.device)
            running[1:] = kept.cumsum(0)
            ends = offsets if last else torch.cat([offsets, offsets.new_full((1,), ids.numel())])
            ends = ends.clamp(0, ids.numel())  # unchecked GPU offsets must not index past
            counts = running[ends[1:]] - running[ends[:-1]]
            out = out / counts.clamp(min=1).unsqueeze(1).to(out.dtype)
        return out if self.out_dtype is None else out.to(self.out_dtype)

    def _flatten(self, input, offsets, per_sample_weights):
        """(ids (M,), offsets, per_sample_weights (M,) or None, include_last_offset) of
        either input form, checked."""
        check_per_sample_weights(self.mode, input, per_sample_weights)
        if per_sample_weights is not None:
            per_sample_weights = per_sample_weights.reshape(-1)
        if input.dim() == 2:
            if offsets is not None:
                raise ValueError("offsets must be None for a 2-D input (one bag a row)")
            bags, length = input.shape
            offsets = torch.arange(bags, dtype=input.dtype, device=input.device) * length
            return input.reshape(-1), offsets, per_sample_weights, False
        if input.dim() != 1:
            raise ValueError(f"input must be 1-D (with offsets) or 2-D, got {input.dim()}-D")
        if offsets is None or offsets.dim() != 1:
            raise ValueError("a 1-D input needs 1-D offsets (the bag starts)")
        return input, offsets, per_sample_weights, self.include_last_offset

    def _max(self, ids: torch.Tensor, offsets: torch.Tensor, last: bool) -> torch.Tensor:
        """(B, K): each bag's elementwise maximum over its rows (padding ids left out),
        zeros for a bag with none."""
        if ids.device.type == "cpu":
            _check_offsets(offsets, ids.numel())
        rows = super().forward(ids)  # RaggedEmbedding's gather
        bags = max(offsets.numel() - 1, 0) if last else offsets.numel()
        # searching all offsets puts a lookup past include_last_offset's end in bag B, which
        # pool drops; so do padding ids
        position = torch.arange(ids.numel(), device=ids.device)
        bag_of = torch.searchsorted(offsets.long(), position, right=True) - 1
        dropped = bag_of < 0
        if self.padding_idx is not None:
            dropped |= ids == self.padding_idx
        return pool(rows, bag_of.masked_fill(dropped, bags), bags, "max")

    def extra_repr(self) -> str:
        return (
            super().extra_repr()
            + f", mode={self.mode!r}"
            + ("" if self.padding_idx is None else f", padding_idx={self.padding_idx}")
            + (", include_last_offset=True" if self.include_last_offset else "")
            + (f", bag_kernel={self.bag_kernel!r}" if self.bag_kernel != "halves" else "")
        )


def _check_offsets(offsets: torch.Tensor, numel: int) -> None:
    """ValueError unless offsets start at 0, never decrease and stay within the ids."""
    if offsets.numel() and int(offsets[0]) != 0:
        raise ValueError(f"offsets must start at 0, got {int(offsets[0])}")
    if bool((offsets[1:] < offsets[:-1]).any()):
        raise ValueError("offsets must be non-decreasing")
    if offsets.numel() and int(offsets[-1]) > numel:
        raise ValueError(f"offsets must not pass the {numel} ids, got {int(offsets[-1])}")
