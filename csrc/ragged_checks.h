// Host-side input checks shared by the CPU (csrc/ragged_cpu.cpp) and CUDA
// (csrc/cuda/ragged.cu) kernels of the ragged serving ops, so both raise the same errors.
#pragma once

#include <c10/util/Exception.h>

#include <cstdint>

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

}  // namespace mixemb
