// int8 ragged tables, shared by the CPU (csrc/ragged_cpu.cpp) and CUDA (csrc/cuda/ragged.cu)
// kernels: the check of the per-row scale and bias, and the dequantization a kernel does as
// it reads a value. Layout (mixemb/quant.py, FBGEMM's 8-bit row-wise tables): values are
// uint8 q, row r has scale_bias[r] = (scale, bias) in float16, and a kept value reads as
// bias + q * scale in float32 — rounded after the product and after the sum, as
// mixemb.quant.dequantize_segments_int8 computes it, so a gather matches the reference bit
// for bit (no fused multiply-add on either backend).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <optional>

namespace mixemb {

// The scale_bias argument of a table's op: for uint8 values an (N, 2) float16 contiguous
// tensor on the values' device (its rows returned); for float values None. Anything else
// is an error naming `op`.
inline const at::Half* check_scale_bias(const at::Tensor& values,
                                        const std::optional<at::Tensor>& scale_bias,
                                        int64_t rows, const char* op) {
  const bool given = scale_bias.has_value() && scale_bias->defined();
  if (values.scalar_type() != at::kByte) {
    TORCH_CHECK(!given, op, ": scale_bias is for int8 tables (uint8 values), got values of ",
                values.scalar_type());
    return nullptr;
  }
  TORCH_CHECK(given, op, ": an int8 table (uint8 values) needs its (N, 2) float16 scale_bias");
  const at::Tensor& sb = *scale_bias;
  TORCH_CHECK(sb.dim() == 2 && sb.size(0) == rows && sb.size(1) == 2 &&
                  sb.scalar_type() == at::kHalf,
              op, ": scale_bias must be (", rows, ", 2) float16, got ", sb.sizes(), " ",
              sb.scalar_type());
  TORCH_CHECK(sb.is_contiguous(), op, ": scale_bias must be contiguous");
  TORCH_CHECK(sb.device() == values.device(), op, ": scale_bias must be on ", values.device(),
              " like the table, got ", sb.device());
  return sb.data_ptr<at::Half>();
}

// The dtype of a table's dense rows and bags: the values' for float tables, float32 for int8.
inline at::ScalarType output_type(const at::Tensor& values) {
  return values.scalar_type() == at::kByte ? at::kFloat : values.scalar_type();
}

// A row's reader: float values read as themselves (out_t = scalar_t); uint8 values as
// bias + q * scale of the row (out_t = float). Built per looked-up row; a row with no
// kept value need not be built (its scale and bias are never read).
template <typename scalar_t>
struct Dequant {
  using out_t = scalar_t;
  C10_HOST_DEVICE Dequant() {}
  C10_HOST_DEVICE Dequant(const at::Half*, int64_t) {}
  C10_HOST_DEVICE out_t operator()(scalar_t v) const { return v; }
};

template <>
struct Dequant<uint8_t> {
  using out_t = float;
  float scale = 0.f;
  float bias = 0.f;
  C10_HOST_DEVICE Dequant() {}
  C10_HOST_DEVICE Dequant(const at::Half* scale_bias, int64_t row)
      : scale(static_cast<float>(scale_bias[2 * row])),
        bias(static_cast<float>(scale_bias[2 * row + 1])) {}
  C10_HOST_DEVICE float operator()(uint8_t q) const {
#ifdef __CUDA_ARCH__
    return __fadd_rn(bias, __fmul_rn(static_cast<float>(q), scale));  // no FMA contraction
#else
    return bias + static_cast<float>(q) * scale;
#endif
  }
};

// What a table of scalar_t values reads as: scalar_t itself, float for uint8.
template <typename scalar_t>
using read_t = typename Dequant<scalar_t>::out_t;

}  // namespace mixemb
