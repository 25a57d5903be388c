"""``BlockTable``: a table pruned to one set of dimensions per frequency block, stored dense
per block with no per-row metadata.

Format (version 1), for N rows of maximum dimension K in L frequency blocks, block l the
ids [boundaries[l], boundaries[l+1]) keeping the d_l columns of its mask row:

* ``boundaries`` (L+1,) int64 — 0 = b_0 < b_1 < … < b_L = N;
* ``mask_bits`` (L, ceil(K/8)) uint8 — bit j of byte w of row l is set when block l keeps
  column 8·w + j (the L×K block mask);
* ``values`` (V,) float32/float16/bfloat16, V = Σ rows_l·d_l — block after block, each
  block's dense (rows_l, d_l) table row-major, its columns in increasing order; or, for an
  **int8** table, (V,) uint8 codes q;
* ``scale_bias`` (R, 2) float16 — int8 tables only (None otherwise): the scale and bias of
  each row of a block with d_l > 0 (R = Σ of those blocks' rows, in row order), a value
  reading as bias + q·scale in float32 (:mod:`mixemb.quant`'s row-wise layout).

Its bytes are exactly :func:`mixemb.prune.budget.block_tables_bytes` of its block sizes and
dims at its value dtype with ``mask_dim=K``. The serving op (:mod:`mixemb.ops.block_table`)
reads a lookup's row through a small index derived from the mask and the block sizes
(:meth:`BlockTable.serving_index`, not stored): per block, where its values and its int8
rows start and d_l; per block and column, the column's slot in the block's rows.
"""

from __future__ import annotations

import torch

from mixemb.quant import dequantize_segments_int8, float_dtype, quantize_segments_int8

FORMAT_VERSION = 1
INT8 = "int8"
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
_BITS = torch.arange(8, dtype=torch.uint8)


def pack_mask(block_mask: torch.Tensor) -> torch.Tensor:
    """(L, K) bool → (L, ceil(K/8)) uint8, bit j of byte w for column 8·w + j."""
    rows, k = block_mask.shape
    padded = torch.zeros(rows, -(-k // 8) * 8, dtype=torch.uint8, device=block_mask.device)
    padded[:, :k] = block_mask.to(torch.uint8)
    shifted = padded.reshape(rows, -1, 8) << _BITS.to(block_mask.device)
    return shifted.sum(-1, dtype=torch.uint8)  # disjoint bits: the sum is an OR


def unpack_mask(mask_bits: torch.Tensor, dim: int) -> torch.Tensor:
    """(L, W) uint8 → (L, dim) bool: whether each block keeps each column."""
    bits = (mask_bits.unsqueeze(-1) >> _BITS.to(mask_bits.device)) & 1
    return bits.reshape(mask_bits.shape[0], -1)[:, :dim].bool()


class BlockTable:
    """The values of a block-pruned (N, K) table plus its boundaries and block mask.

    Build with :meth:`from_block_mask`. Attributes: ``boundaries``, ``mask_bits``,
    ``values``, ``scale_bias`` (None unless int8), ``embedding_dim`` (see the module
    docstring). ``index``: the (layout, rank) of :meth:`serving_index` when the caller
    holds it (a module's buffers), else derived on first use.
    """

    def __init__(
        self,
        boundaries: torch.Tensor,
        mask_bits: torch.Tensor,
        values: torch.Tensor,
        embedding_dim: int,
        *,
        scale_bias: torch.Tensor | None = None,
        validate: bool = True,
        index: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        self.boundaries, self.mask_bits, self.values = boundaries, mask_bits, values
        self.scale_bias = scale_bias
        self.embedding_dim = embedding_dim
        self._index = index
        if validate:
            self.validate()

    @classmethod
    def from_block_mask(
        cls,
        pruned: torch.Tensor,
        boundaries: torch.Tensor,
        block_mask: torch.Tensor,
        dtype: torch.dtype | str | None = None,
    ) -> BlockTable:
        """Store ``pruned`` on its block mask.

        pruned: (N, K) float32/float16/bfloat16/float64, zero outside the columns its row's
            block keeps (a value there would be dropped: ValueError).
        boundaries: (L+1,) int64, 0 < … increasing to N: block l is the ids [b_l, b_{l+1}).
        block_mask: (L, K) bool, the columns each block keeps.
        dtype: default None (pruned's dtype, float32/float16/bfloat16); a float dtype or
            its name "fp32", "fp16", "bf16" casts the values; "int8" quantizes each row's
            kept values to uint8 codes with an fp16 scale and bias
            (:func:`mixemb.quant.quantize_segments_int8`, as a masked table's rows round).
        """
        if isinstance(dtype, str) and dtype != INT8:
            dtype = float_dtype(dtype)
        if pruned.dim() != 2 or not pruned.is_floating_point():
            raise ValueError(
                f"pruned must be (N, K) float, got {tuple(pruned.shape)} {pruned.dtype}"
            )
        n, k = pruned.shape
        _check_boundaries(boundaries, n)
        num_blocks = boundaries.numel() - 1
        if block_mask.shape != (num_blocks, k) or block_mask.dtype != torch.bool:
            raise ValueError(
                f"block_mask must be ({num_blocks}, {k}) bool, got "
                f"{tuple(block_mask.shape)} {block_mask.dtype}"
            )
        dtype = pruned.dtype if dtype is None else dtype
        if dtype != INT8 and dtype not in FLOAT_DTYPES:
            raise ValueError(f"dtype must be one of {FLOAT_DTYPES} or {INT8!r}, got {dtype!r}")
        boundaries, block_mask = boundaries.to(pruned.device), block_mask.to(pruned.device)
        counts = boundaries.diff()
        rows = torch.repeat_interleave(block_mask, counts, dim=0)
        outside = (pruned != 0) & ~rows
        if bool(outside.any()):
            row, col = (int(i) for i in outside.nonzero()[0])
            raise ValueError(
                f"pruned[{row}, {col}] = {float(pruned[row, col])} lies outside the columns "
                f"its block keeps"
            )
        values = pruned[rows]  # row-major: the blocks' dense tables one after another
        scale_bias = None
        if dtype == INT8:
            lengths = torch.repeat_interleave(block_mask.sum(1), counts)
            values, scale_bias = quantize_segments_int8(values, lengths)
            scale_bias = scale_bias[lengths > 0]
        else:
            values = values.to(dtype)
        return cls(boundaries.clone(), pack_mask(block_mask), values, k, scale_bias=scale_bias)

    # ---- what it holds ------------------------------------------------------------------
    @property
    def num_embeddings(self) -> int:
        return int(self.boundaries[-1])

    @property
    def num_blocks(self) -> int:
        return self.boundaries.numel() - 1

    @property
    def value_dtype(self) -> str:
        """The stored values' dtype name: "fp32", "fp16", "bf16" or "int8"."""
        return INT8 if self.scale_bias is not None else _NAMES[self.values.dtype]

    @property
    def rows_dtype(self) -> torch.dtype:
        """The dtype of the rows the serving op returns by default: the values', float32
        for int8."""
        return torch.float32 if self.scale_bias is not None else self.values.dtype

    def block_mask(self) -> torch.Tensor:
        """(L, K) bool: the columns each block keeps."""
        return unpack_mask(self.mask_bits, self.embedding_dim)

    def block_sizes(self) -> list[int]:
        """Rows of each block."""
        return self.boundaries.diff().tolist()

    def block_dims(self) -> list[int]:
        """d_l, the columns each block keeps."""
        return self.block_mask().sum(1).tolist()

    def block_values(self, block: int) -> torch.Tensor:
        """(rows_l, d_l) in :attr:`rows_dtype`: block ``block``'s dense table as served
        (an int8 table's codes dequantized)."""
        sizes, dims = self.block_sizes(), self.block_dims()
        start = sum(s * d for s, d in zip(sizes[:block], dims[:block]))
        size, d = sizes[block], dims[block]
        q = self.values[start : start + size * d]
        if self.scale_bias is None:
            return q.reshape(size, d)
        first = sum(s for s, m in zip(sizes[:block], dims[:block]) if m > 0)
        sb = self.scale_bias[first : first + size] if d else self.scale_bias[:0]
        lengths = torch.full((sb.shape[0],), d, dtype=torch.int64, device=q.device)
        return dequantize_segments_int8(q, lengths, sb).reshape(size, d)

    def to_dense(self) -> torch.Tensor:
        """(N, K) in :attr:`rows_dtype` with zeros at the columns a row's block drops."""
        counts = self.boundaries.diff()
        rows = torch.repeat_interleave(self.block_mask(), counts, dim=0)
        dense = torch.zeros(rows.shape, dtype=self.rows_dtype, device=self.values.device)
        values = self.values
        if self.scale_bias is not None:
            lengths = torch.repeat_interleave(self.block_mask().sum(1), counts)
            values = dequantize_segments_int8(values, lengths[lengths > 0], self.scale_bias)
        dense[rows] = values
        return dense

    def serving_index(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(layout (L, 3) int64, rank (L, K) int32), derived from the boundaries and the
        mask: layout[l] = (index in ``values`` of block l's first value, index in
        ``scale_bias`` of its first row, d_l); rank[l, k] = the slot of column k in block
        l's rows, -1 where the block drops it. Cached."""
        if self._index is None:
            self._index = serving_index(self.boundaries, self.mask_bits, self.embedding_dim)
        return self._index

    def nbytes(self) -> int:
        """Bytes of every stored tensor: :func:`mixemb.prune.budget.block_tables_bytes`."""
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def tensors(self) -> dict[str, torch.Tensor]:
        """The stored tensors by name (``scale_bias`` only for an int8 table)."""
        out = {"boundaries": self.boundaries, "mask_bits": self.mask_bits, "values": self.values}
        if self.scale_bias is not None:
            out["scale_bias"] = self.scale_bias
        return out

    # ---- checks and files ---------------------------------------------------------------
    def validate(self) -> None:
        """Check the whole table (O(L·K + V), on construction and load); raises a one-line
        ValueError naming what is inconsistent: types, shapes, dtypes, layouts and devices;
        boundaries from 0, strictly increasing; no mask bit at or past K; as many values as
        the blocks keep; an int8 table's uint8 codes and finite (R, 2) float16
        ``scale_bias``; finite float values."""
        k = self.embedding_dim
        if type(k) is not int or k < 1:  # bool and float are not sizes
            raise ValueError(f"embedding_dim must be an int >= 1, got {k!r}")
        for name, t in self.tensors().items():
            if not isinstance(t, torch.Tensor):
                raise ValueError(f"{name} must be a tensor, got {type(t).__name__}")
            if t.layout != torch.strided or not t.is_contiguous():
                raise ValueError(f"{name} must be a dense contiguous tensor")
        devices = {t.device for t in self.tensors().values()}
        if len(devices) != 1:
            raise ValueError(
                f"table tensors must be on one device, got {sorted(map(str, devices))}"
            )
        _check_boundaries(self.boundaries, None)
        words = -(-k // 8)
        bits = self.mask_bits
        if bits.shape != (self.num_blocks, words) or bits.dtype != torch.uint8:
            raise ValueError(
                f"mask_bits must be ({self.num_blocks}, {words}) uint8, got "
                f"{tuple(bits.shape)} {bits.dtype}"
            )
        if k % 8 and bool((bits[:, -1] >> (k % 8)).ne(0).any()):
            block = int((bits[:, -1] >> (k % 8)).ne(0).nonzero()[0])
            raise ValueError(
                f"mask_bits of block {block} keep columns at or past embedding_dim={k}"
            )
        sizes, dims = self.block_sizes(), self.block_dims()
        kept = sum(s * d for s, d in zip(sizes, dims))
        v = self.values
        if self.scale_bias is not None:
            rows = sum(s for s, d in zip(sizes, dims) if d > 0)
            sb = self.scale_bias
            if v.dim() != 1 or v.dtype != torch.uint8:
                raise ValueError(
                    f"an int8 table's values must be (V,) uint8, got {tuple(v.shape)} {v.dtype}"
                )
            if sb.shape != (rows, 2) or sb.dtype != torch.float16:
                raise ValueError(
                    f"scale_bias must be ({rows}, 2) float16 (a row of every block keeping "
                    f"a column), got {tuple(sb.shape)} {sb.dtype}"
                )
            _check_finite(sb, "scale_bias")
        elif v.dim() != 1 or v.dtype not in FLOAT_DTYPES:
            raise ValueError(
                f"values must be (V,) of {FLOAT_DTYPES} (uint8 with a scale_bias), got "
                f"{tuple(v.shape)} {v.dtype}"
            )
        if v.numel() != kept:
            raise ValueError(f"the blocks keep {kept} values but {v.numel()} are stored")
        if self.scale_bias is None:
            _check_finite(v, "values")

    def state_dict(self) -> dict:
        """Plain dict (tensors, ints, a str) that loads with ``torch.load(weights_only=True)``."""
        return {
            "format_version": FORMAT_VERSION,
            "value_format": "float" if self.scale_bias is None else INT8,
            "embedding_dim": self.embedding_dim,
            **self.tensors(),
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> BlockTable:
        """The table of a :meth:`state_dict` (e.g. from an untrusted file), fully validated
        (:meth:`validate`); raises a one-line ValueError naming the first inconsistency."""
        if not isinstance(state, dict):
            raise ValueError(f"a block table state must be a dict, got {type(state).__name__}")
        if state.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"unsupported block table format version {state.get('format_version')!r}"
            )
        missing = [key for key in _STATE_KEYS if key not in state]
        if missing:
            raise ValueError(f"block table state lacks {missing}")
        value_format = state.get("value_format")
        if value_format not in ("float", INT8):
            raise ValueError(f"value_format must be 'float' or 'int8', got {value_format!r}")
        if (value_format == INT8) != (state.get("scale_bias") is not None):
            raise ValueError(
                f"a {value_format} block table state must hold a scale_bias exactly when int8"
            )
        return cls(
            state["boundaries"],
            state["mask_bits"],
            state["values"],
            state["embedding_dim"],
            scale_bias=state.get("scale_bias"),
        )

    def to(self, device) -> BlockTable:
        moved = {name: t.to(device) for name, t in self.tensors().items()}
        return BlockTable(
            moved["boundaries"], moved["mask_bits"], moved["values"], self.embedding_dim,
            scale_bias=moved.get("scale_bias"),
        )  # fmt: skip

    def __repr__(self) -> str:
        return (
            f"BlockTable({self.num_embeddings}, {self.embedding_dim}, blocks={self.num_blocks}, "
            f"dims={self.block_dims()}, dtype={self.value_dtype}, nbytes={self.nbytes()})"
        )


_STATE_KEYS = ("boundaries", "mask_bits", "values", "embedding_dim", "value_format")


def serving_index(
    boundaries: torch.Tensor, mask_bits: torch.Tensor, dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(layout (L, 3) int64, rank (L, K) int32) of a block table's boundaries (L+1,) int64
    and mask_bits (L, W) uint8: see :meth:`BlockTable.serving_index`."""
    mask = unpack_mask(mask_bits, dim)
    dims = mask.sum(1)
    sizes = boundaries.diff()
    value_start = (sizes * dims).cumsum(0) - sizes * dims
    with_rows = sizes * (dims > 0)
    row_start = with_rows.cumsum(0) - with_rows
    layout = torch.stack([value_start, row_start, dims], 1)
    rank = torch.where(mask, mask.int().cumsum(1) - 1, -1).to(torch.int32)
    return layout.contiguous(), rank.contiguous()


def _check_boundaries(boundaries: torch.Tensor, num_rows: int | None) -> None:
    """ValueError unless boundaries (L+1,) int64 start at 0 and increase strictly (to
    ``num_rows`` when given)."""
    if boundaries.dim() != 1 or boundaries.numel() < 2 or boundaries.dtype != torch.int64:
        raise ValueError(
            f"boundaries must be (L+1,) int64 with L >= 1, got "
            f"{tuple(boundaries.shape)} {boundaries.dtype}"
        )
    b = boundaries.tolist()
    if b[0] != 0 or (num_rows is not None and b[-1] != num_rows):
        end = "N" if num_rows is None else f"N={num_rows}"
        raise ValueError(f"boundaries must run from 0 to {end}, got {b[:4]}…{b[-1]}")
    if any(hi <= lo for lo, hi in zip(b, b[1:])):
        raise ValueError(f"boundaries must be strictly increasing, got {b[:8]}")


def _check_finite(values: torch.Tensor, name: str) -> None:
    """ValueError if a float tensor holds NaN or ±inf (naming the first position)."""
    bad = ~torch.isfinite(values)
    if values.numel() and bool(bad.any()):
        first = int(bad.reshape(-1).nonzero()[0])
        raise ValueError(f"{name} holds {float(values.reshape(-1)[first])} at position {first}")
