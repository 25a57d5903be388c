"""``RaggedTable``: a pruned embedding table that stores only its kept values.

Format (version 1), for N rows of maximum dimension K, W = ceil(K / 64) mask words:

* ``masks``  (N, W) int64 — bit j of word w is set when dimension 64·w + j is kept;
* ``values`` (nnz,) float32/float16/bfloat16 — kept values, row after row, dimensions
  in increasing order within a row; or, for an **int8** table, (nnz,) uint8 codes q;
* ``scale_bias`` (N, 2) float16 — int8 tables only (None otherwise): each row's scale
  and bias (:mod:`mixemb.quant`'s row-wise layout, FBGEMM's 8-bit row-wise tables), a
  kept value reading as bias + q·scale in float32; a row keeping nothing has scale 0,
  bias 0;
* ``group_offsets`` (ceil(N / G) + 1,) int64 — index in ``values`` of the first value
  of each group of G consecutive rows (G = ``group_size``, default 16); the last entry
  is nnz.

A row's first value sits at ``group_offsets[row // G]`` plus the popcounts of the masks
of the rows before it in its group; a kept dimension's slot adds the popcount of the
row's mask bits below it. Metadata is 8·W + 8/G bytes per row: 8.5 B at K ≤ 64 with
G = 16, against 256 B per row for a padded fp32 K = 64 table. The alternative — one
int64 offset per row plus a uint8 column index per kept value — costs 8 + d bytes per
row for a row keeping d dimensions, i.e. more than the mask format once d ≥ 1. An int8
table pays 1 B per kept value plus 4 B per row (scale and bias) beside that metadata.

The serving ops (:mod:`mixemb.ops.ragged`) dequantize int8 values as they read them: an
int8 table's rows, bags and scores are float32. Its state carries ``value_format``
("float" or "int8"); a state without it (written before int8 tables) is "float".
"""

from __future__ import annotations

import math

import torch

from mixemb.quant import dequantize_segments_int8, float_dtype, quantize_segments_int8

FORMAT_VERSION = 1
_BITS = torch.arange(64, dtype=torch.int64)
VALUE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
INT8 = "int8"  # from_dense's dtype for an int8 table (uint8 codes + per-row scale and bias)
VALUE_FORMATS = ("float", INT8)


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
    ``values``, ``group_offsets``, ``scale_bias`` (None unless int8; see the module
    docstring), ``num_embeddings``, ``embedding_dim``, ``group_size``.
    """

    def __init__(
        self,
        masks: torch.Tensor,
        values: torch.Tensor,
        group_offsets: torch.Tensor,
        embedding_dim: int,
        group_size: int = 16,
        *,
        scale_bias: torch.Tensor | None = None,
        validate: bool = True,
    ) -> None:
        self.masks, self.values, self.group_offsets = masks, values, group_offsets
        self.scale_bias = scale_bias
        self.embedding_dim, self.group_size = int(embedding_dim), int(group_size)
        if validate:
            self.validate()

    @classmethod
    def from_dense(
        cls,
        pruned: torch.Tensor,
        *,
        group_size: int = 16,
        dtype: torch.dtype | str | None = None,
    ) -> RaggedTable:
        """Store the non-zero entries of ``pruned`` (N, K) float.

        dtype: default None (pruned's dtype); a float dtype of :data:`VALUE_DTYPES` (or
            its name "fp32", "fp16", "bf16") casts the values; ``"int8"`` quantizes each
            row's kept values to uint8 codes with an fp16 scale and bias
            (:func:`mixemb.quant.quantize_segments_int8`).
        """
        if isinstance(dtype, str) and dtype != INT8:
            dtype = float_dtype(dtype)
        if pruned.dim() != 2:
            raise ValueError(f"pruned must be (N, K), got shape {tuple(pruned.shape)}")
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        if pruned.dtype not in VALUE_DTYPES:
            raise ValueError(f"pruned must be a float tensor {VALUE_DTYPES}, got {pruned.dtype}")
        if dtype is not None and dtype != INT8 and dtype not in VALUE_DTYPES:
            raise ValueError(f"dtype must be one of {VALUE_DTYPES} or {INT8!r}, got {dtype!r}")
        present = pruned != 0
        values = pruned[present]  # row-major: rows in order, dims increasing
        counts = present.sum(1)
        scale_bias = None
        if dtype == INT8:
            _check_finite(values, "pruned")
            values, scale_bias = quantize_segments_int8(values, counts)
        elif dtype is not None:
            values = values.to(dtype)
        if scale_bias is None:
            _check_finite(values, "pruned" if dtype is None else f"pruned cast to {dtype}")
        n = pruned.shape[0]
        starts = torch.zeros(n + 1, dtype=torch.int64, device=pruned.device)
        starts[1:] = counts.cumsum(0)
        group_offsets = starts[torch.arange(0, n + group_size, group_size).clamp(max=n)]
        group_offsets = group_offsets[: math.ceil(n / group_size) + 1]
        return cls(
            _pack_bits(present),
            values,
            group_offsets,
            pruned.shape[1],
            group_size,
            scale_bias=scale_bias,
        )

    @property
    def num_embeddings(self) -> int:
        return self.masks.shape[0]

    @property
    def nnz(self) -> int:
        return self.values.numel()

    @property
    def value_format(self) -> str:
        """The values' encoding: "int8" (uint8 codes, a per-row scale and bias) or "float"."""
        return "float" if self.scale_bias is None else INT8

    @property
    def rows_dtype(self) -> torch.dtype:
        """The dtype of the rows the serving ops return: the values', float32 for int8."""
        return torch.float32 if self.scale_bias is not None else self.values.dtype

    def validate(self) -> None:
        """Check the whole table (O(N + nnz), once, on construction and load); raises
        ValueError naming what is inconsistent. What it checks: types, shapes, dtypes and
        devices; no mask bit at or past ``embedding_dim``; the values the masks keep are
        the values stored; ``group_offsets`` are the masks' running popcounts (so they
        start at 0, never decrease and end at nnz); the values are finite; an int8 table's
        values are uint8 and its ``scale_bias`` (N, 2) float16 and finite. The serving
        kernels then only check, per lookup, that a row lies inside the values."""
        for name, t in self.tensors().items():
            if not isinstance(t, torch.Tensor):
                raise ValueError(f"{name} must be a tensor, got {type(t).__name__}")
        for name in ("embedding_dim", "group_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        k = self.embedding_dim
        words = max(math.ceil(k / 64), 1)
        if self.masks.dim() != 2 or self.masks.shape[1] != words or self.masks.dtype != torch.int64:
            shape = tuple(self.masks.shape)
            raise ValueError(f"masks must be (N, {words}) int64, got {shape} {self.masks.dtype}")
        n = self.masks.shape[0]
        if self.scale_bias is not None:
            sb = self.scale_bias
            if sb.shape != (n, 2) or sb.dtype != torch.float16:
                raise ValueError(
                    f"scale_bias must be ({n}, 2) float16, got {tuple(sb.shape)} {sb.dtype}"
                )
            if self.values.dim() != 1 or self.values.dtype != torch.uint8:
                raise ValueError(
                    f"an int8 table's values must be (nnz,) uint8, got "
                    f"{tuple(self.values.shape)} {self.values.dtype}"
                )
        elif self.values.dim() != 1 or self.values.dtype not in VALUE_DTYPES:
            raise ValueError(
                f"values must be (nnz,) of {VALUE_DTYPES} (uint8 with a scale_bias), got "
                f"{tuple(self.values.shape)} {self.values.dtype}"
            )
        devices = {t.device for t in self.tensors().values()}
        if len(devices) != 1:
            raise ValueError(
                f"table tensors must be on one device, got {sorted(map(str, devices))}"
            )
        groups = math.ceil(n / self.group_size) + 1
        if self.group_offsets.shape != (groups,) or self.group_offsets.dtype != torch.int64:
            raise ValueError(
                f"group_offsets must be ({groups},) int64, got {tuple(self.group_offsets.shape)}"
            )
        if k % 64 and n and bool((self.masks[:, -1] >> (k % 64)).ne(0).any()):
            row = int((self.masks[:, -1] >> (k % 64)).ne(0).nonzero()[0])
            raise ValueError(f"masks of row {row} keep dims at or past embedding_dim={k}")
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
        if self.scale_bias is None:
            _check_finite(self.values, "values")
        else:
            _check_finite(self.scale_bias, "scale_bias")

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

    def dense_values(self) -> torch.Tensor:
        """(nnz,) the values as served: the stored floats, or an int8 table's dequantized
        float32 values (:func:`mixemb.quant.dequantize_segments_int8`)."""
        if self.scale_bias is None:
            return self.values
        return dequantize_segments_int8(self.values, self.row_dims(), self.scale_bias)

    def to_dense(self) -> torch.Tensor:
        """(N, K) in :attr:`rows_dtype` with zeros at pruned entries (an int8 table's values
        dequantized)."""
        present = expand_bits(self.masks, self.embedding_dim)
        dense = torch.zeros(present.shape, dtype=self.rows_dtype, device=self.values.device)
        dense[present] = self.dense_values()
        return dense

    def nbytes(self) -> int:
        """Bytes of every stored tensor (values, an int8 table's scale and bias, metadata)."""
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def tensors(self) -> dict[str, torch.Tensor]:
        """The stored tensors by name (``scale_bias`` only for an int8 table)."""
        out = {"masks": self.masks, "values": self.values, "group_offsets": self.group_offsets}
        if self.scale_bias is not None:
            out["scale_bias"] = self.scale_bias
        return out

    def state_dict(self) -> dict:
        """Plain dict (tensors, ints, a str) that loads with ``torch.load(weights_only=True)``."""
        return {
            "format_version": FORMAT_VERSION,
            "value_format": self.value_format,
            "embedding_dim": self.embedding_dim,
            "group_size": self.group_size,
            **self.tensors(),
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> RaggedTable:
        """The table of a :meth:`state_dict` (e.g. from an untrusted file), fully validated
        (:meth:`validate`); raises ValueError naming the first inconsistency."""
        if not isinstance(state, dict):
            raise ValueError(f"a ragged table state must be a dict, got {type(state).__name__}")
        version = state.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"unsupported ragged table format version {version!r}")
        missing = [key for key in _STATE_KEYS if key not in state]
        if missing:
            raise ValueError(f"ragged table state lacks {missing}")
        for key in ("embedding_dim", "group_size"):
            if type(state[key]) is not int:  # bool and float are not sizes
                raise ValueError(f"{key} must be an int, got {state[key]!r}")
        value_format = state.get("value_format", "float")  # absent: written before int8
        if value_format not in VALUE_FORMATS:
            raise ValueError(f"value_format must be one of {VALUE_FORMATS}, got {value_format!r}")
        scale_bias = state.get("scale_bias")
        if (value_format == INT8) != (scale_bias is not None):
            raise ValueError(
                f"a ragged table state of value_format {value_format!r} must "
                + ("hold" if value_format == INT8 else "not hold")
                + " a scale_bias"
            )
        return cls(
            state["masks"],
            state["values"],
            state["group_offsets"],
            state["embedding_dim"],
            state["group_size"],
            scale_bias=scale_bias,
        )

    def to(self, device) -> RaggedTable:
        return RaggedTable(
            self.masks.to(device),
            self.values.to(device),
            self.group_offsets.to(device),
            self.embedding_dim,
            self.group_size,
            scale_bias=None if self.scale_bias is None else self.scale_bias.to(device),
        )

    def __repr__(self) -> str:
        dtype = INT8 if self.scale_bias is not None else self.values.dtype
        return (
            f"RaggedTable({self.num_embeddings}, {self.embedding_dim}, nnz={self.nnz}, "
            f"dtype={dtype}, nbytes={self.nbytes()})"
        )


_STATE_KEYS = ("masks", "values", "group_offsets", "embedding_dim", "group_size")


def _check_finite(values: torch.Tensor, name: str) -> None:
    """Raise ValueError if a float tensor holds NaN or ±inf (naming the first position)."""
    bad = ~torch.isfinite(values)
    if values.numel() and bool(bad.any()):
        first = int(bad.reshape(-1).nonzero()[0])
        raise ValueError(f"{name} holds {float(values.reshape(-1)[first])} at position {first}")
