"""Value dtypes of a stored table: bytes per value and the round trip through each.

A table is trained in fp32 and stored in one of :data:`VALUE_DTYPES`:

* ``"fp32"``: 4 B per value, exact;
* ``"fp16"`` / ``"bf16"``: 2 B per value, a cast;
* ``"int8"``: 1 B per value plus a per-row scale and bias stored as two fp16 (4 B per row),
  the layout of FBGEMM's 8-bit row-wise tables: q = round((x - bias) / scale),
  scale = (max - min) / 255, bias = min, and x̂ = bias + q·scale.

The int8 scale and bias are rounded to fp16 *outward* (bias down, scale up), so every q
lands in [0, 255] unclamped and |x̂ - x| ≤ scale / 2 holds against the stored fp16 scale;
a constant row gets scale ≈ 0 and comes back within that bound (exactly when its value is
an fp16), a zero row exactly, with no division by zero. Rows may have different lengths
(a ragged table's rows): the ``*_segments_*`` functions take the values flat, row after
row, and the row lengths.

Dequantizing computes what a dequantize-on-the-fly kernel serves, so a model evaluated on
:func:`round_rows` / :func:`round_segments` of its table is the stored model.
"""

from __future__ import annotations

import torch

VALUE_DTYPES = ("fp32", "fp16", "bf16", "int8")
_VALUE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}
_FLOATS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
INT8_ROW_BYTES = 4  # an int8 row's fp16 scale and fp16 bias
INT8_LEVELS = 255
FP16_MAX = 65504.0  # an int8 row's bias must be an fp16


def check_value_dtype(value_dtype: str) -> str:
    """``value_dtype`` if it is one of :data:`VALUE_DTYPES`, else ValueError."""
    if value_dtype not in _VALUE_BYTES:
        raise ValueError(
            f"value_dtype must be one of {', '.join(VALUE_DTYPES)}, got {value_dtype!r}"
        )
    return value_dtype


def value_bytes(value_dtype: str) -> int:
    """Bytes of one stored value in ``value_dtype``."""
    return _VALUE_BYTES[check_value_dtype(value_dtype)]


def float_dtype(value_dtype: str) -> torch.dtype:
    """The torch dtype of a float value dtype ("fp32", "fp16" or "bf16"); ValueError for
    "int8" (no torch dtype holds its rows) or an unknown name."""
    if value_dtype not in _FLOATS:
        floats = ", ".join(_FLOATS)
        raise ValueError(f"value_dtype must be one of {floats} here, got {value_dtype!r}")
    return _FLOATS[value_dtype]


def row_bytes(value_dtype: str) -> int:
    """Bytes every stored row pays beside its values: the scale and bias of int8, else 0."""
    return INT8_ROW_BYTES if check_value_dtype(value_dtype) == "int8" else 0


def _fp16_toward(x: torch.Tensor, direction: float) -> torch.Tensor:
    """(R,) float64 → (R,) float16: the nearest fp16 not above x (direction -inf) or not
    below x (direction +inf)."""
    h = x.to(torch.float16)
    wrong = h.double() > x if direction < 0 else h.double() < x
    step = torch.nextafter(h, torch.full_like(h, direction))
    return torch.where(wrong, step, h)


def _check_lengths(numel: int, lengths: torch.Tensor) -> torch.Tensor:
    if lengths.dim() != 1 or lengths.dtype.is_floating_point:
        raise ValueError(
            f"lengths must be a 1-D integer tensor, got {lengths.dtype} {tuple(lengths.shape)}"
        )
    lengths = lengths.long()
    if bool((lengths < 0).any()) or int(lengths.sum()) != numel:
        raise ValueError(
            f"lengths must be >= 0 and sum to the {numel} values, got sum {int(lengths.sum())}"
        )
    return lengths


def quantize_segments_int8(
    values: torch.Tensor, lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """values (nnz,) float, row after row; lengths (R,) int, summing to nnz →
    (q (nnz,) uint8, scale_bias (R, 2) float16: column 0 the scale, column 1 the bias).

    An empty row gets scale = bias = 0. Raises ValueError for values that are not finite
    or beyond fp16's range (the bias is stored as an fp16).
    """
    if values.dim() != 1 or not values.dtype.is_floating_point:
        raise ValueError(
            f"values must be a 1-D float tensor, got {values.dtype} {tuple(values.shape)}"
        )
    lengths = _check_lengths(values.numel(), lengths.to(values.device))
    x = values.double()
    if x.numel() and not bool((x.abs() <= FP16_MAX).all()):  # NaN fails the test too
        raise ValueError(f"int8 rows need finite values with |x| <= {FP16_MAX:g} (fp16 bias)")
    rows = lengths.numel()
    row = torch.repeat_interleave(torch.arange(rows, device=x.device), lengths)
    lo = torch.zeros(rows, dtype=torch.float64, device=x.device)
    hi = torch.zeros_like(lo)
    if x.numel():
        lo = lo.scatter_reduce(0, row, x, "amin", include_self=False)
        hi = hi.scatter_reduce(0, row, x, "amax", include_self=False)
    bias = _fp16_toward(lo, float("-inf"))
    scale = _fp16_toward((hi - bias.double()) / INT8_LEVELS, float("inf"))
    s, b = scale.double()[row], bias.double()[row]
    q = torch.where(s > 0, (x - b) / torch.where(s > 0, s, 1.0), 0.0).round()
    q = q.clamp(0, INT8_LEVELS).to(torch.uint8)  # in range already; the clamp is a guard
    return q, torch.stack([scale, bias], 1)


def dequantize_segments_int8(
    q: torch.Tensor, lengths: torch.Tensor, scale_bias: torch.Tensor
) -> torch.Tensor:
    """q (nnz,) uint8, lengths (R,) int, scale_bias (R, 2) float16 → (nnz,) float32:
    bias + q·scale of each value's row."""
    lengths = _check_lengths(q.numel(), lengths.to(q.device))
    if scale_bias.shape != (lengths.numel(), 2):
        raise ValueError(
            f"scale_bias must be ({lengths.numel()}, 2), got {tuple(scale_bias.shape)}"
        )
    sb = torch.repeat_interleave(scale_bias.float(), lengths, dim=0)
    return sb[:, 1] + q.float() * sb[:, 0]


def quantize_rows_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (R, D) float → (q (R, D) uint8, scale_bias (R, 2) float16), one scale and bias
    per row (see :func:`quantize_segments_int8`)."""
    if x.dim() != 2:
        raise ValueError(f"x must be (R, D), got shape {tuple(x.shape)}")
    lengths = torch.full((x.shape[0],), x.shape[1], dtype=torch.int64, device=x.device)
    q, scale_bias = quantize_segments_int8(x.reshape(-1), lengths)
    return q.reshape(x.shape), scale_bias


def dequantize_rows_int8(q: torch.Tensor, scale_bias: torch.Tensor) -> torch.Tensor:
    """q (R, D) uint8, scale_bias (R, 2) float16 → (R, D) float32."""
    if q.dim() != 2:
        raise ValueError(f"q must be (R, D), got shape {tuple(q.shape)}")
    lengths = torch.full((q.shape[0],), q.shape[1], dtype=torch.int64, device=q.device)
    return dequantize_segments_int8(q.reshape(-1), lengths, scale_bias).reshape(q.shape)


def round_segments(values: torch.Tensor, lengths: torch.Tensor, value_dtype: str) -> torch.Tensor:
    """values (nnz,) float, lengths (R,) int → (nnz,) in values' dtype: what a table storing
    those rows in ``value_dtype`` serves (values itself for fp32)."""
    if check_value_dtype(value_dtype) == "fp32":
        return values
    if value_dtype == "int8":
        q, scale_bias = quantize_segments_int8(values, lengths)
        return dequantize_segments_int8(q, lengths, scale_bias).to(values.dtype)
    return values.to(_FLOATS[value_dtype]).to(values.dtype)


def round_rows(x: torch.Tensor, value_dtype: str) -> torch.Tensor:
    """x (R, D) float → (R, D) in x's dtype, its rows stored in ``value_dtype`` and read
    back (x itself for fp32)."""
    if check_value_dtype(value_dtype) == "fp32":
        return x
    if value_dtype == "int8":
        return dequantize_rows_int8(*quantize_rows_int8(x)).to(x.dtype)
    return x.to(_FLOATS[value_dtype]).to(x.dtype)
