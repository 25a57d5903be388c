// The one TORCH_LIBRARY of mixemb: every op schema, one comment above each def.
// Kernels: csrc/ragged_cpu.cpp (CPU), csrc/cuda/ragged.cu (CUDA). Fake (meta) kernels and
// autograd are registered from Python (mixemb/ops/ragged.py).
//
// A ragged table is passed as its three tensors (see mixemb/ragged.py):
//   masks (N, W) int64 presence bits, values (nnz,) fp32/fp16/bf16 kept values row after
//   row, group_offsets (ceil(N/G)+1,) int64 first value of each group of G rows.
#include <torch/library.h>

TORCH_LIBRARY(mixemb, m) {
  // Dense rows (..., K) of a ragged table, zeros at pruned dims.
  m.def(
      "ragged_gather(Tensor masks, Tensor values, Tensor group_offsets, int group_size, "
      "int dim, Tensor ids, bool check_bounds=True) -> Tensor");
  // The same into a caller's contiguous (..., K) buffer of the values' dtype (serving loops
  // that reuse one: no allocation, no first-touch page faults).
  m.def(
      "ragged_gather_out(Tensor masks, Tensor values, Tensor group_offsets, int group_size, "
      "int dim, Tensor ids, Tensor(a!) out, bool check_bounds=True) -> ()");
  // EmbeddingBag over a ragged table: mode 0 = sum, 1 = mean; offsets (B,) or (B+1,).
  m.def(
      "ragged_bag(Tensor masks, Tensor values, Tensor group_offsets, int group_size, int dim, "
      "Tensor ids, Tensor offsets, int mode, Tensor? per_sample_weights, "
      "bool include_last_offset, bool check_bounds=True) -> Tensor");
  // MF scores (B,) float32: dot products over the dims both rows keep.
  m.def(
      "ragged_dot(Tensor masks_a, Tensor values_a, Tensor group_offsets_a, int group_size_a, "
      "Tensor masks_b, Tensor values_b, Tensor group_offsets_b, int group_size_b, int dim, "
      "Tensor ids_a, Tensor ids_b, bool check_bounds=True) -> Tensor");
}
