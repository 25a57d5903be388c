// Host-side input checks shared by the CPU (csrc/ragged_cpu.cpp) and CUDA
// (csrc/cuda/ragged.cu) kernels of the ragged serving ops, so both raise the same errors.
#pragma once

#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <cstdint>
#include <optional>

namespace mixemb {

// EmbeddingBag offsets (host memory, n of them, over m_ids ids): non-decreasing, within
// [0, m_ids], starting at 0.
inline void check_bag_offsets(const int64_t* offsets, int64_t n, int64_t m_ids) {
  for (int64_t b = 0; b < n; ++b) {
    TORCH_CHECK(offsets[b] >= 0 && offsets[b] <= m_ids && (b == 0 || offsets[b] >= offsets[b - 1]),
                "ragged_bag: offsets must be non-decreasing within [0, ", m_ids, "]; offsets[",
                b, "] = ", offsets[b]);
  }
  TORCH_CHECK(n == 0 || offsets[0] == 0, "ragged_bag: offsets must start at 0");
}

// The CUDA variant arguments (csrc/ops.cpp), checked on every backend so that a bad value
// fails alike on CPU and GPU.
// lookups_at_once: None (the kernel's default) or 1, 2, 4, 8; returns it, or `fallback`.
inline int check_lookups_at_once(const std::optional<int64_t>& lookups_at_once, int fallback,
                                 const char* op) {
  if (!lookups_at_once.has_value()) return fallback;
  const int64_t u = *lookups_at_once;
  TORCH_CHECK(u == 1 || u == 2 || u == 4 || u == 8, op,
              ": lookups_at_once must be 1, 2, 4 or 8 (or None), got ", u);
  return static_cast<int>(u);
}

// bag_kernel: "halves" or "lanes"; true for "lanes".
inline bool check_bag_kernel(c10::string_view bag_kernel) {
  TORCH_CHECK(bag_kernel == "halves" || bag_kernel == "lanes",
              "ragged_bag: bag_kernel must be 'halves' or 'lanes', got '", bag_kernel, "'");
  return bag_kernel == "lanes";
}

}  // namespace mixemb
