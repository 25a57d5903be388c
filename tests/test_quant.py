"""Value dtypes: bytes per value, and int8 row-wise round trips against a float64 reference."""

from __future__ import annotations

import pytest
import torch

from mixemb.quant import (
    VALUE_DTYPES,
    dequantize_rows_int8,
    dequantize_segments_int8,
    quantize_rows_int8,
    quantize_segments_int8,
    round_rows,
    round_segments,
    row_bytes,
    value_bytes,
)

# name -> (rows, dims): the edge cases of a row-wise table
SHAPES = {"empty": (0, 4), "one row": (1, 7), "D=1": (5, 1), "no dims": (3, 0), "wide": (9, 70)}


def _reference(q: torch.Tensor, scale_bias: torch.Tensor) -> torch.Tensor:
    """bias + q·scale in float64, from the stored fp16 scale and bias."""
    sb = scale_bias.double()
    return sb[:, 1:2] + q.double() * sb[:, 0:1]


def _check_bound(x: torch.Tensor, q: torch.Tensor, scale_bias: torch.Tensor) -> None:
    err = (_reference(q, scale_bias) - x.double()).abs()
    bound = scale_bias[:, 0:1].double() / 2 + 1e-12
    bad = (err > bound).nonzero()
    assert bad.numel() == 0, f"{bad.shape[0]} values beyond scale/2, first {bad[:3].tolist()}"


def test_bytes_per_value_and_per_row():
    assert [value_bytes(d) for d in VALUE_DTYPES] == [4, 2, 2, 1]
    assert [row_bytes(d) for d in VALUE_DTYPES] == [0, 0, 0, 4]
    with pytest.raises(ValueError, match="value_dtype"):
        value_bytes("int4")


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_int8_rows_are_within_half_a_step_of_a_float64_reference(shape):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0)) * 3 + 0.5
    q, scale_bias = quantize_rows_int8(x)
    assert q.dtype == torch.uint8 and q.shape == x.shape
    assert scale_bias.dtype == torch.float16 and scale_bias.shape == (shape[0], 2)
    _check_bound(x, q, scale_bias)
    out = dequantize_rows_int8(q, scale_bias)
    assert out.dtype == torch.float32 and out.shape == x.shape
    # the fp32 dequantization is the float64 one up to fp32 rounding
    torch.testing.assert_close(out.double(), _reference(q, scale_bias), rtol=1e-6, atol=1e-6)
    if shape[1] > 1 and shape[0]:  # rows of spread values use the whole 0..255 range
        assert int(q.max(1).values.min()) >= 254


def test_constant_and_zero_rows_come_back_without_nan():
    x = torch.tensor([[0.0, 0.0, 0.0], [2.5, 2.5, 2.5], [-1000.3, -1000.3, -1000.3]])
    q, scale_bias = quantize_rows_int8(x)
    out = dequantize_rows_int8(q, scale_bias)
    assert not out.isnan().any()
    assert torch.equal(out[:2], x[:2])  # zero and an fp16 constant: exact
    assert scale_bias[0].tolist() == [0.0, 0.0] and scale_bias[1, 0] == 0
    _check_bound(x, q, scale_bias)  # not an fp16: within half of its tiny scale
    assert (out[2] - x[2]).abs().max() < 1e-3


def test_int8_refuses_values_an_fp16_bias_cannot_hold():
    for bad in (float("nan"), float("inf"), 1e6):
        with pytest.raises(ValueError, match="fp16"):
            quantize_rows_int8(torch.tensor([[0.0, bad]]))


def test_segments_quantize_each_row_of_its_own_length():
    g = torch.Generator().manual_seed(1)
    lengths = torch.tensor([3, 0, 1, 5, 0])
    values = torch.randn(int(lengths.sum()), generator=g) * torch.tensor(
        [1.0] * 3 + [10.0] + [0.01] * 5
    )
    q, scale_bias = quantize_segments_int8(values, lengths)
    assert q.shape == values.shape and scale_bias.shape == (5, 2)
    assert scale_bias[1].tolist() == [0.0, 0.0] and scale_bias[4].tolist() == [0.0, 0.0]
    out = dequantize_segments_int8(q, lengths, scale_bias)
    rows = torch.repeat_interleave(torch.arange(5), lengths)
    err = (out.double() - values.double()).abs()
    assert bool((err <= scale_bias[rows, 0].double() / 2 + 1e-6 * values.abs().double()).all())
    # a segment's rows equal the same rows quantized as a dense table
    q_dense, sb_dense = quantize_rows_int8(values[4:9].reshape(1, 5))
    assert torch.equal(q[4:9], q_dense[0]) and torch.equal(scale_bias[3], sb_dense[0])
    empty_q, empty_sb = quantize_segments_int8(torch.zeros(0), torch.zeros(0, dtype=torch.long))
    assert empty_q.numel() == 0 and empty_sb.shape == (0, 2)
    with pytest.raises(ValueError, match="lengths"):
        quantize_segments_int8(values, torch.tensor([3, 1]))


@pytest.mark.parametrize("value_dtype", VALUE_DTYPES)
def test_round_trips_keep_shape_and_dtype_and_are_idempotent(value_dtype):
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(2))
    once = round_rows(x, value_dtype)
    assert once.shape == x.shape and once.dtype == x.dtype
    if value_dtype == "fp32":
        assert once is x
    else:
        assert not torch.equal(once, x)  # randn values are not all representable
        cast = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(value_dtype)
        if cast is not None:
            assert torch.equal(round_rows(once, value_dtype), once)
            assert torch.equal(once, x.to(cast).float())
    lengths = torch.full((6,), 5)
    assert torch.equal(round_segments(x.reshape(-1), lengths, value_dtype), once.reshape(-1))
