// The one TORCH_LIBRARY of mixemb: every op schema, one comment above each def.
// Kernels: csrc/ragged_cpu.cpp (CPU), csrc/cuda/ragged.cu (CUDA); csrc/block_table_cpu.cpp
// (CPU; block_gather's CUDA kernel is Triton, registered from Python). Fake (meta) kernels
// are registered from Python (mixemb/ops/ragged.py, mixemb/ops/block_table.py); ragged_bag's
// autograd (per_sample_weights) in C++, csrc/ragged_autograd.cpp.
//
// A ragged table is passed as its three tensors (see mixemb/ragged.py):
//   masks (N, W) int64 presence bits, values (nnz,) fp32/fp16/bf16 kept values row after
//   row, group_offsets (ceil(N/G)+1,) int64 first value of each group of G rows;
//   an int8 table stores values (nnz,) uint8 and passes scale_bias (N, 2) float16 (each
//   row's scale and bias, csrc/ragged_int8.h), which the kernels dequantize as they read:
//   its rows, bags and scores are float32. scale_bias is None (the default) for float tables.
// Every kernel makes an inconsistent table an error, never an out-of-bounds access: each
// looked-up row must lie inside the values with no mask bit at or past dim (CPU: a
// ValueError; CUDA: the row reads as zeros, raised with check_bounds), and the CPU kernels
// check group_offsets' ends (0, nnz) on every call. Full validation is on load (Python).
//
// CUDA kernel variants, arguments of every op so that they run side by side (tests, bench);
// the CPU kernels check their values and otherwise ignore them:
//   one_warp         rows of one mask word (K <= 64) take the one-warp kernel of wider rows
//                    (a warp per lookup; per bag for ragged_bag) instead of 16 lanes each;
//   lookups_at_once  lookups (pairs) that 16 lanes of a one-word kernel serve at once:
//                    1, 2, 4 or 8; None = the kernel's default (1; 4 for bag_kernel lanes);
//   bag_kernel       ragged_bag over one-word rows: "halves" (each half-warp takes every
//                    other lookup of a bag) or "lanes" (32 lanes locate 32 lookups at once).
#include <torch/library.h>

TORCH_LIBRARY(mixemb, m) {
  // Dense rows (..., K) of a ragged table, zeros at pruned dims.
  m.def(
      "ragged_gather(Tensor masks, Tensor values, Tensor group_offsets, int group_size, "
      "int dim, Tensor ids, bool check_bounds=True, bool one_warp=False, "
      "int? lookups_at_once=None, Tensor? scale_bias=None) -> Tensor");
  // The same into a caller's contiguous (..., K) buffer of the rows' dtype (no allocation).
  m.def(
      "ragged_gather_out(Tensor masks, Tensor values, Tensor group_offsets, int group_size, "
      "int dim, Tensor ids, Tensor(a!) out, bool check_bounds=True, bool one_warp=False, "
      "int? lookups_at_once=None, Tensor? scale_bias=None) -> ()");
  // EmbeddingBag over a ragged table: mode 0 = sum, 1 = mean; offsets (B,) or (B+1,).
  m.def(
      "ragged_bag(Tensor masks, Tensor values, Tensor group_offsets, int group_size, int dim, "
      "Tensor ids, Tensor offsets, int mode, Tensor? per_sample_weights, "
      "bool include_last_offset, bool check_bounds=True, str bag_kernel=\"halves\", "
      "bool one_warp=False, int? lookups_at_once=None, Tensor? scale_bias=None) -> Tensor");
  // MF scores (B,) float32: dot products over the dims both rows keep.
  m.def(
      "ragged_dot(Tensor masks_a, Tensor values_a, Tensor group_offsets_a, int group_size_a, "
      "Tensor masks_b, Tensor values_b, Tensor group_offsets_b, int group_size_b, int dim, "
      "Tensor ids_a, Tensor ids_b, bool check_bounds=True, bool one_warp=False, "
      "int? lookups_at_once=None, Tensor? scale_bias_a=None, Tensor? scale_bias_b=None) -> Tensor");
  // Dense rows (..., K) of a block table (mixemb/block_table.py) and its serving index.
  m.def(
      "block_gather(Tensor values, Tensor? scale_bias, Tensor boundaries, Tensor layout, "
      "Tensor rank, Tensor ids, ScalarType? out_dtype=None, bool check_bounds=True) -> Tensor");
}
