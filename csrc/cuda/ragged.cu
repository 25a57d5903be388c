// CUDA kernels of the ragged serving ops (schemas in csrc/ops.cpp; CPU twins in
// csrc/ragged_cpu.cpp).
//
// Rows of one mask word (K <= 64): 16 lanes per lookup, 4 consecutive dims per lane (the
// *_word_kernel kernels: 16 lanes serve U = lookups_at_once lookups or pairs at once, their
// loads in stages; a bag's two half-warps take U of its lookups each at a time, or, with
// bag_kernel "lanes", its lanes first locate 32 lookups at once). Wider rows, and one-word
// rows with one_warp: one warp per lookup (gather, dot) or per bag, each lane handling 2
// of every 64 dims. Either way the lanes first count the kept values of the rows before
// the looked-up row in its group (popcounts, a shuffle sum) to find where the row's values
// start; a dim's slot is then the row start plus the popcount of the mask bits below it.
// Pruned dims are written as zeros by the same pass, so the output needs no memset. Only
// kept values are read. The variants are op arguments (csrc/ops.cpp); bench/bench_serve.py
// times them side by side and bench/README.md has the figures behind the defaults.
// int8 tables (uint8 values with a per-row fp16 scale and bias, csrc/ragged_int8.h) are
// dequantized as each value is read (Dequant, built per located row) into float32 rows,
// bags and scores; every kernel is a template over the stored type, so the variants all
// serve them.
//
// Lean includes only (no ATen/cuda/CUDAContext.h): this file compiles with nvcc against
// the CPU torch wheel's headers, and takes the current stream from the AOTI C shim.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <c10/core/DeviceGuard.h>
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include "../ragged_checks.h"
#include "../ragged_int8.h"

#include <algorithm>
#include <cstdint>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace mixemb {
namespace {

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 8;
constexpr int64_t kMaxDim = 1024;  // 16 mask words; bags keep 32 accumulators per lane

cudaStream_t current_stream(const at::Tensor& t) {
  void* stream = nullptr;
  TORCH_CHECK(aoti_torch_get_current_cuda_stream(t.get_device(), &stream) == AOTI_TORCH_SUCCESS,
              "mixemb: could not get the current CUDA stream");
  return static_cast<cudaStream_t>(stream);
}

void check_launch(const char* op) {
  const cudaError_t err = cudaGetLastError();
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA launch failed: ", cudaGetErrorString(err));
}

struct TableView {
  const int64_t* masks;
  const int64_t* group_offsets;
  int64_t rows;
  int64_t words;
  int64_t group_size;
  int group_shift;          // log2(group_size) when a power of two, else -1
  int64_t nnz;              // values.numel()
  unsigned long long high;  // the bits of a row's last mask word at or past dim
  const at::Half* scale_bias;  // (rows, 2) of an int8 table, else null
};

// Whether a located row (start, its kept-value count, its last mask word) lies inside the
// values and keeps no dim at or past dim. A consistent table always passes; a row of a
// corrupt one (values replaced, offsets or masks edited) that fails is read as empty
// (zeros) and recorded, never read out of bounds: on the GPU the host cannot afford the
// whole-table check per call, so each lookup clamps its own row.
__device__ __forceinline__ bool row_fits(const TableView& t, int64_t start, int64_t count,
                                         unsigned long long last_word) {
  return start >= 0 && start <= t.nnz - count && (last_word & t.high) == 0;
}

// Records the smallest position whose row failed row_fits (bad[1]; bad[0] holds the
// smallest bad id's). Raised by the host after the launch when check_bounds is on.
__device__ __forceinline__ void record_bad_row(unsigned long long* bad, int64_t pos, int lane) {
  if (bad != nullptr && lane == 0) atomicMin(bad + 1, static_cast<unsigned long long>(pos));
}

// a + b in unsigned arithmetic: a corrupt group offset near INT64_MAX wraps (and then
// fails row_fits) instead of overflowing.
__device__ __forceinline__ int64_t wrap_add(int64_t a, int64_t b) {
  return static_cast<int64_t>(static_cast<unsigned long long>(a) +
                              static_cast<unsigned long long>(b));
}

// The group of `row`: a shift for power-of-two group sizes (the default 16), else a 64-bit
// division (a called routine on the GPU).
__device__ __forceinline__ int64_t group_of(const TableView& t, int64_t row) {
  return t.group_shift >= 0 ? row >> t.group_shift : row / t.group_size;
}

__device__ __forceinline__ int64_t warp_sum(int64_t v) {
  for (int off = kWarp / 2; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return __shfl_sync(0xffffffffu, v, 0);
}

template <typename T>
__device__ __forceinline__ T warp_sum_float(T v) {
  for (int off = kWarp / 2; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;
}

// First value of `row` (all lanes get the same answer).
__device__ __forceinline__ int64_t row_start(const TableView& t, int64_t row, int lane) {
  int64_t count = 0;
  const int64_t group = group_of(t, row);
  for (int64_t r = group * t.group_size + lane; r < row; r += kWarp) {
    for (int64_t w = 0; w < t.words; ++w) {
      count += __popcll(static_cast<unsigned long long>(t.masks[r * t.words + w]));
    }
  }
  return wrap_add(t.group_offsets[group], warp_sum(count));
}

// Kept values of row `row` over all its mask words, and its last mask word.
__device__ __forceinline__ int64_t row_kept(const TableView& t, int64_t row,
                                            unsigned long long& last_word) {
  int64_t kept = 0;
  for (int64_t w = 0; w < t.words; ++w) {
    last_word = static_cast<unsigned long long>(t.masks[row * t.words + w]);
    kept += __popcll(last_word);
  }
  return kept;
}

// Ids [lo, hi) of `bag`, clamped into [0, num_ids] so that malformed offsets (checked on
// the host only with check_bounds) never read past ids / weights.
template <typename index_t>
__device__ __forceinline__ void bag_range(const index_t* offsets, int64_t bag,
                                          int64_t num_offsets, int64_t num_ids, int64_t& lo,
                                          int64_t& hi) {
  lo = min(max(static_cast<int64_t>(offsets[bag]), int64_t{0}), num_ids);
  hi = bag + 1 < num_offsets ? static_cast<int64_t>(offsets[bag + 1]) : num_ids;
  hi = min(max(hi, lo), num_ids);
}

// Records the smallest bad position; the host raises after the launch if asked to. `lane`:
// the lane's index among those serving the lookup (lane 0 records).
__device__ __forceinline__ bool valid_id(int64_t id, int64_t rows, int64_t pos,
                                         unsigned long long* bad, int lane) {
  if (id >= 0 && id < rows) return true;
  if (bad != nullptr && lane == 0) atomicMin(bad, static_cast<unsigned long long>(pos));
  return false;
}

template <typename scalar_t, typename index_t>
__global__ void ragged_gather_kernel(TableView t, const scalar_t* __restrict__ values,
                                     const index_t* __restrict__ ids, int64_t n, int64_t dim,
                                     read_t<scalar_t>* __restrict__ out,
                                     unsigned long long* bad) {
  using out_t = read_t<scalar_t>;
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
       i < n; i += warps) {
    const int64_t id = static_cast<int64_t>(ids[i]);
    out_t* dst = out + i * dim;
    if (!valid_id(id, t.rows, i, bad, lane)) {
      for (int64_t k = lane; k < dim; k += kWarp) dst[k] = out_t(0);
      continue;
    }
    int64_t start = row_start(t, id, lane);
    unsigned long long last_word = 0;
    if (!row_fits(t, start, row_kept(t, id, last_word), last_word)) {
      record_bad_row(bad, i, lane);
      for (int64_t k = lane; k < dim; k += kWarp) dst[k] = out_t(0);
      continue;
    }
    const Dequant<scalar_t> dq(t.scale_bias, id);
    for (int64_t w = 0; w < t.words; ++w) {
      const unsigned long long m = static_cast<unsigned long long>(t.masks[id * t.words + w]);
      for (int b = lane; b < 64; b += kWarp) {
        const int64_t k = w * 64 + b;
        if (k < dim) {
          const bool kept = (m >> b) & 1ull;
          const int64_t slot = start + __popcll(m & ((1ull << b) - 1ull));
          dst[k] = kept ? dq(values[slot]) : out_t(0);
        }
      }
      start += __popcll(m);
    }
  }
}

// Rows of one mask word (dim <= 64), the common case: 16 lanes per lookup, 4 consecutive
// dims per lane, so a fp32 row is written as one 16-byte store per lane (one 256-byte
// transaction per row at K = 64). The lanes of a lookup load the masks of the group's
// earlier rows 16 at a time (a group of <= 16 rows in one step) and sum their popcounts
// with 4 shuffles.
//
// A lookup is a chain of three dependent loads (its id; its mask, group offset and the
// earlier masks; its values), so the kernels are latency-bound. They go in three stages,
// every load of a stage issued before any of its results is used (the first stage reads
// row 0 for a skipped lookup rather than branch around its loads): issue_word_rows,
// locate_word_rows, read_word_rows. 16 lanes may serve U lookups (pairs) at once, U a
// template argument chosen at launch from the op's lookups_at_once argument.
constexpr int kLanesPerRow = 16;
constexpr int kDimsPerLane = 4;

template <typename scalar_t>
struct alignas(sizeof(scalar_t) * kDimsPerLane) Dims4 {
  scalar_t v[kDimsPerLane];
};

// Which half of its warp a lane is in, as a shuffle mask.
__device__ __forceinline__ unsigned half_warp_lanes() {
  return (threadIdx.x % kWarp) < kLanesPerRow ? 0x0000ffffu : 0xffff0000u;
}

// Lookups [i0, i0 + U) of ids (those < n): the ids, and which are in range (a bad one is
// recorded in `bad`; positions past n are neither).
template <int U, typename index_t>
__device__ __forceinline__ void load_ids(const index_t* __restrict__ ids, int64_t i0, int64_t n,
                                         int64_t rows, unsigned long long* bad, int sub,
                                         int64_t (&id)[U], bool (&ok)[U]) {
#pragma unroll
  for (int u = 0; u < U; ++u) id[u] = i0 + u < n ? static_cast<int64_t>(ids[i0 + u]) : 0;
#pragma unroll
  for (int u = 0; u < U; ++u) ok[u] = i0 + u < n && valid_id(id[u], rows, i0 + u, bad, sub);
}

// U one-word rows as the 16 lanes of a lookup group find them. A skipped row (ok false)
// reads row 0 and ends with mask 0: no value is read for it, and it adds or writes zeros.
template <int U>
struct WordRows {
  int64_t row[U];                  // the row read (0 for a skipped one)
  unsigned long long mask[U];      // its mask
  int64_t slot[U];                 // its group's first value; its own after locate
  unsigned long long earlier[U];   // mask of this lane's first earlier row in the group
};

// Stage 1: every row's mask, group offset and this lane's first earlier-row mask: plain
// loads of valid addresses, none of whose results is used here, so all 3U go out at once.
template <int U>
__device__ __forceinline__ void issue_word_rows(const TableView& t, const int64_t (&id)[U],
                                                const bool (&ok)[U], int sub,
                                                WordRows<U>& w) {
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int64_t row = ok[u] ? id[u] : 0;
    const int64_t group = group_of(t, row);
    const int64_t first = group * t.group_size + sub;
    w.row[u] = row;
    w.mask[u] = static_cast<unsigned long long>(t.masks[row]);
    w.slot[u] = t.group_offsets[group];
    w.earlier[u] = static_cast<unsigned long long>(t.masks[first < row ? first : row]);
  }
}

// Stage 2: the kept values of the earlier rows of each row's group (the rest of a group
// of > 16 rows, then 4 shuffles), so slot[u] becomes the row's first value; skipped rows,
// and rows of lookups i0 + u that fail row_fits (recorded in bad), get mask 0. Every lane
// of the 16 runs the shuffles.
template <int U>
__device__ __forceinline__ void locate_word_rows(const TableView& t, const bool (&ok)[U],
                                                 int sub, unsigned lanes, int64_t i0,
                                                 unsigned long long* bad, WordRows<U>& w) {
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int64_t row = w.row[u];
    const int64_t first = group_of(t, row) * t.group_size + sub;
    int64_t count = first < row ? __popcll(w.earlier[u]) : 0;
    for (int64_t r = first + kLanesPerRow; r < row; r += kLanesPerRow) {
      count += __popcll(static_cast<unsigned long long>(t.masks[r]));
    }
    for (int off = kLanesPerRow / 2; off > 0; off >>= 1) {
      count += __shfl_xor_sync(lanes, count, off, kLanesPerRow);
    }
    w.slot[u] = wrap_add(w.slot[u], count);
    if (ok[u] && !row_fits(t, w.slot[u], __popcll(w.mask[u]), w.mask[u])) {
      record_bad_row(bad, i0 + u, sub);
      w.mask[u] = 0;
    }
    if (!ok[u]) w.mask[u] = 0;
  }
}

// Stage 3: this lane's 4 dims (sub * 4 + j) of every row, as out_t, zeros where pruned,
// and which of the 4 are kept (bit j). Bits at or past dim are 0 in a mask. An int8 row's
// scale and bias are read only for a row with a kept value (a skipped row has mask 0).
template <int U, typename scalar_t, typename out_t>
__device__ __forceinline__ void read_word_rows(const TableView& t,
                                               const scalar_t* __restrict__ values, int sub,
                                               const WordRows<U>& w,
                                               out_t (&vals)[U][kDimsPerLane],
                                               unsigned (&kept)[U]) {
  const int k0 = sub * kDimsPerLane;
#pragma unroll
  for (int u = 0; u < U; ++u) {
    int64_t slot = w.slot[u] + __popcll(w.mask[u] & ((1ull << k0) - 1ull));  // k0 <= 60
    kept[u] = static_cast<unsigned>(w.mask[u] >> k0) & 0xfu;
    const Dequant<scalar_t> dq =
        w.mask[u] != 0 ? Dequant<scalar_t>(t.scale_bias, w.row[u]) : Dequant<scalar_t>();
#pragma unroll
    for (int j = 0; j < kDimsPerLane; ++j) {
      const bool keep = (kept[u] >> j) & 1u;
      vals[u][j] = keep ? static_cast<out_t>(dq(values[slot])) : out_t(0);
      slot += keep;
    }
  }
}

template <int U, typename scalar_t, typename index_t>
__global__ void ragged_gather_word_kernel(TableView t, const scalar_t* __restrict__ values,
                                          const index_t* __restrict__ ids, int64_t n,
                                          int64_t dim, read_t<scalar_t>* __restrict__ out,
                                          unsigned long long* bad, bool vector_store) {
  using out_t = read_t<scalar_t>;
  const int sub = threadIdx.x % kLanesPerRow;
  // the 16 lanes of these lookups: the shuffles name only them, so the two halves of a
  // warp may leave the loop at different iterations
  const unsigned lanes = half_warp_lanes();
  const int64_t per_block = blockDim.x / kLanesPerRow;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * per_block * U;
  const int k0 = sub * kDimsPerLane;
  for (int64_t i0 =
           (static_cast<int64_t>(blockIdx.x) * per_block + threadIdx.x / kLanesPerRow) * U;
       i0 < n; i0 += stride) {
    int64_t id[U];
    bool ok[U];
    load_ids<U>(ids, i0, n, t.rows, bad, sub, id, ok);
    WordRows<U> w;
    issue_word_rows<U>(t, id, ok, sub, w);
    locate_word_rows<U>(t, ok, sub, lanes, i0, bad, w);
    out_t vals[U][kDimsPerLane];
    unsigned kept[U];
    read_word_rows<U>(t, values, sub, w, vals, kept);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (i0 + u >= n) break;
      out_t* dst = out + (i0 + u) * dim;
      if (vector_store) {
        Dims4<out_t> v;
#pragma unroll
        for (int j = 0; j < kDimsPerLane; ++j) v.v[j] = vals[u][j];
        if (k0 < dim) *reinterpret_cast<Dims4<out_t>*>(dst + k0) = v;
      } else {
#pragma unroll
        for (int j = 0; j < kDimsPerLane; ++j) {
          if (k0 + j < dim) dst[k0 + j] = vals[u][j];
        }
      }
    }
  }
}

// acc[j] += scale[u] * (dim sub * 4 + j of row u) over U located rows (stage 3 of a bag).
template <int U, typename scalar_t, typename acc_t>
__device__ __forceinline__ void add_word_rows(const TableView& t,
                                              const scalar_t* __restrict__ values, int sub,
                                              const WordRows<U>& w, const acc_t (&scale)[U],
                                              acc_t (&acc)[kDimsPerLane]) {
  acc_t vals[U][kDimsPerLane];
  unsigned kept[U];
  read_word_rows<U>(t, values, sub, w, vals, kept);
#pragma unroll
  for (int u = 0; u < U; ++u) {
#pragma unroll
    for (int j = 0; j < kDimsPerLane; ++j) {
      if ((kept[u] >> j) & 1u) acc[j] += scale[u] * vals[u][j];
    }
  }
}

// A bag's sum (mean) of one-word rows out of the 4 accumulators of each lane of its warp:
// the two halves add up, the first writes dims sub * 4 + j.
template <typename out_t>
__device__ __forceinline__ void write_word_bag(at::opmath_type<out_t> (&acc)[kDimsPerLane],
                                               int64_t bag, int64_t lo, int64_t hi,
                                               int64_t dim, int mean, out_t* __restrict__ out) {
  using acc_t = at::opmath_type<out_t>;
  const int half = (threadIdx.x % kWarp) / kLanesPerRow;
  const int k0 = (threadIdx.x % kLanesPerRow) * kDimsPerLane;
  const acc_t div = (mean && hi > lo) ? static_cast<acc_t>(hi - lo) : acc_t(1);
#pragma unroll
  for (int j = 0; j < kDimsPerLane; ++j) {
    acc[j] += __shfl_xor_sync(0xffffffffu, acc[j], kLanesPerRow);
    if (half == 0 && k0 + j < dim) out[bag * dim + k0 + j] = static_cast<out_t>(acc[j] / div);
  }
}

// A bag of one-word rows: one warp per bag, each half-warp taking U lookups of the bag at
// a time (lookups [lo, lo + U) go to the first half, the next U to the second, and so on),
// 4 accumulators per lane in registers; the halves add up once at the end.
template <int U, typename scalar_t, typename index_t>
__global__ void ragged_bag_word_kernel(
    TableView t, const scalar_t* __restrict__ values, const index_t* __restrict__ ids,
    const index_t* __restrict__ offsets, int64_t num_offsets, int64_t num_ids, int64_t bags,
    int64_t dim, int mean, const at::opmath_type<read_t<scalar_t>>* __restrict__ weights,
    read_t<scalar_t>* __restrict__ out, unsigned long long* bad) {
  using acc_t = at::opmath_type<read_t<scalar_t>>;
  const int half = (threadIdx.x % kWarp) / kLanesPerRow;
  const int sub = threadIdx.x % kLanesPerRow;
  const unsigned lanes = half_warp_lanes();
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t bag = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
       bag < bags; bag += warps) {
    acc_t acc[kDimsPerLane];
#pragma unroll
    for (int j = 0; j < kDimsPerLane; ++j) acc[j] = acc_t(0);
    int64_t lo, hi;
    bag_range(offsets, bag, num_offsets, num_ids, lo, hi);
    for (int64_t i0 = lo + half * U; i0 < hi; i0 += 2 * U) {
      int64_t id[U];
      bool ok[U];
      load_ids<U, index_t>(ids, i0, hi, t.rows, bad, sub, id, ok);
      acc_t scale[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        scale[u] = weights && ok[u] ? weights[i0 + u] : acc_t(1);
      }
      WordRows<U> w;
      issue_word_rows<U>(t, id, ok, sub, w);
      locate_word_rows<U>(t, ok, sub, lanes, i0, bad, w);
      add_word_rows<U>(t, values, sub, w, scale, acc);
    }
    write_word_bag(acc, bag, lo, hi, dim, mean, out);
  }
}

// A bag of one-word rows located lane-parallel: one warp per bag. For each chunk of up to
// 32 of the bag's lookups, lane l locates lookup l on its own (its id; then its mask,
// weight, group offset and the masks of the earlier rows of its group), so a chunk costs
// two dependent loads whatever its length, where the halves kernel above pays three per
// lookup pair. Then each half-warp reads the located rows' values, U lookups at a time
// (U = lookups_at_once), their slots and masks broadcast by shuffles. Chosen with
// bag_kernel "lanes".
template <int U, typename scalar_t, typename index_t>
__global__ void ragged_bag_lanes_kernel(
    TableView t, const scalar_t* __restrict__ values, const index_t* __restrict__ ids,
    const index_t* __restrict__ offsets, int64_t num_offsets, int64_t num_ids, int64_t bags,
    int64_t dim, int mean, const at::opmath_type<read_t<scalar_t>>* __restrict__ weights,
    read_t<scalar_t>* __restrict__ out, unsigned long long* bad) {
  using acc_t = at::opmath_type<read_t<scalar_t>>;
  const int lane = threadIdx.x % kWarp;
  const int half = lane / kLanesPerRow;
  const int sub = lane % kLanesPerRow;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t bag = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
       bag < bags; bag += warps) {
    acc_t acc[kDimsPerLane];
#pragma unroll
    for (int j = 0; j < kDimsPerLane; ++j) acc[j] = acc_t(0);
    int64_t lo, hi;
    bag_range(offsets, bag, num_offsets, num_ids, lo, hi);
    for (int64_t c = lo; c < hi; c += kWarp) {
      // this lane's lookup c + lane: a skipped one (past hi, bad id) reads row 0, mask 0
      const int64_t i = c + lane;
      const int64_t id = i < hi ? static_cast<int64_t>(ids[i]) : 0;
      const bool ok = i < hi && valid_id(id, t.rows, i, bad, 0);
      const int64_t row = ok ? id : 0;
      const int64_t group = group_of(t, row);
      const int64_t first = group * t.group_size;
      unsigned long long mask = static_cast<unsigned long long>(t.masks[row]);
      int64_t slot = t.group_offsets[group];
      const acc_t scale = weights && ok ? weights[i] : acc_t(1);
      int64_t count = 0;
      for (int64_t r0 = first; r0 < row; r0 += kLanesPerRow) {  // one pass for groups <= 16
#pragma unroll
        for (int r = 0; r < kLanesPerRow; ++r) {
          if (r0 + r < row) count += __popcll(static_cast<unsigned long long>(t.masks[r0 + r]));
        }
      }
      slot = wrap_add(slot, count);
      if (ok && !row_fits(t, slot, __popcll(mask), mask)) {
        record_bad_row(bad, i, 0);
        mask = 0;
      }
      if (!ok) mask = 0;
      // the chunk's lookups j = 2u + half (+ 2U per step), U per half at once
      const int m = static_cast<int>(hi - c < kWarp ? hi - c : kWarp);
      for (int j0 = 0; j0 < m; j0 += 2 * U) {
        WordRows<U> w;
        acc_t sc[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
          const int j = j0 + 2 * u + half;
          const int src = j < m ? j : 0;
          w.mask[u] = __shfl_sync(0xffffffffu, mask, src);
          w.slot[u] = __shfl_sync(0xffffffffu, slot, src);
          sc[u] = __shfl_sync(0xffffffffu, scale, src);
          // an int8 row's scale and bias are found by its row (float rows need no row)
          if constexpr (std::is_same_v<scalar_t, uint8_t>) {
            w.row[u] = __shfl_sync(0xffffffffu, row, src);
          }
          if (j >= m) w.mask[u] = 0;
        }
        add_word_rows<U>(t, values, sub, w, sc, acc);
      }
    }
    write_word_bag(acc, bag, lo, hi, dim, mean, out);
  }
}

// A dot of one-word rows: 16 lanes per pair, 4 dims per lane, U pairs per 16 lanes at
// once; both tables' stages interleave.
template <int U, typename scalar_t, typename index_t>
__global__ void ragged_dot_word_kernel(TableView ta, const scalar_t* __restrict__ va,
                                       TableView tb, const scalar_t* __restrict__ vb,
                                       const index_t* __restrict__ ids_a,
                                       const index_t* __restrict__ ids_b, int64_t n,
                                       at::opmath_type<read_t<scalar_t>>* __restrict__ out,
                                       unsigned long long* bad) {
  using acc_t = at::opmath_type<read_t<scalar_t>>;
  const int sub = threadIdx.x % kLanesPerRow;
  const unsigned lanes = half_warp_lanes();
  const int64_t per_block = blockDim.x / kLanesPerRow;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * per_block * U;
  for (int64_t i0 =
           (static_cast<int64_t>(blockIdx.x) * per_block + threadIdx.x / kLanesPerRow) * U;
       i0 < n; i0 += stride) {
    int64_t a[U], b[U];
    bool ok[U], ok_b[U];
    load_ids<U, index_t>(ids_a, i0, n, ta.rows, bad, sub, a, ok);
    load_ids<U, index_t>(ids_b, i0, n, tb.rows, bad, sub, b, ok_b);
#pragma unroll
    for (int u = 0; u < U; ++u) ok[u] = ok[u] && ok_b[u];  // a pair with a bad id scores 0
    WordRows<U> wa, wb;
    issue_word_rows<U>(ta, a, ok, sub, wa);
    issue_word_rows<U>(tb, b, ok, sub, wb);
    locate_word_rows<U>(ta, ok, sub, lanes, i0, bad, wa);
    locate_word_rows<U>(tb, ok, sub, lanes, i0, bad, wb);
    acc_t ra[U][kDimsPerLane], rb[U][kDimsPerLane];
    unsigned ka[U], kb[U];
    read_word_rows<U>(ta, va, sub, wa, ra, ka);
    read_word_rows<U>(tb, vb, sub, wb, rb, kb);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      acc_t acc = acc_t(0);
#pragma unroll
      for (int j = 0; j < kDimsPerLane; ++j) {
        if (((ka[u] & kb[u]) >> j) & 1u) acc += ra[u][j] * rb[u][j];
      }
      for (int off = kLanesPerRow / 2; off > 0; off >>= 1) {
        acc += __shfl_xor_sync(lanes, acc, off, kLanesPerRow);
      }
      if (sub == u % kLanesPerRow && i0 + u < n) out[i0 + u] = acc;
    }
  }
}

template <typename scalar_t, typename index_t>
__global__ void ragged_bag_kernel(TableView t, const scalar_t* __restrict__ values,
                                  const index_t* __restrict__ ids,
                                  const index_t* __restrict__ offsets, int64_t num_offsets,
                                  int64_t num_ids, int64_t bags, int64_t dim, int mean,
                                  const at::opmath_type<read_t<scalar_t>>* __restrict__ weights,
                                  read_t<scalar_t>* __restrict__ out, unsigned long long* bad) {
  using acc_t = at::opmath_type<read_t<scalar_t>>;
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t bag = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
       bag < bags; bag += warps) {
    acc_t acc[2 * (kMaxDim / 64)];
#pragma unroll
    for (int j = 0; j < 2 * (kMaxDim / 64); ++j) acc[j] = acc_t(0);
    int64_t lo, hi;
    bag_range(offsets, bag, num_offsets, num_ids, lo, hi);
    for (int64_t i = lo; i < hi; ++i) {
      const int64_t id = static_cast<int64_t>(ids[i]);
      if (!valid_id(id, t.rows, i, bad, lane)) continue;
      const acc_t scale = weights ? weights[i] : acc_t(1);
      int64_t start = row_start(t, id, lane);
      unsigned long long last_word = 0;
      if (!row_fits(t, start, row_kept(t, id, last_word), last_word)) {
        record_bad_row(bad, i, lane);
        continue;
      }
      const Dequant<scalar_t> dq(t.scale_bias, id);
      for (int64_t w = 0; w < t.words; ++w) {
        const unsigned long long m = static_cast<unsigned long long>(t.masks[id * t.words + w]);
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int b = lane + h * kWarp;
          if ((m >> b) & 1ull) {
            acc[2 * w + h] += scale * static_cast<acc_t>(dq(
                                          values[start + __popcll(m & ((1ull << b) - 1ull))]));
          }
        }
        start += __popcll(m);
      }
    }
    const acc_t div = (mean && hi > lo) ? static_cast<acc_t>(hi - lo) : acc_t(1);
    for (int64_t w = 0; w < t.words; ++w) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t k = w * 64 + lane + h * kWarp;
        if (k < dim) out[bag * dim + k] = static_cast<read_t<scalar_t>>(acc[2 * w + h] / div);
      }
    }
  }
}

template <typename scalar_t, typename index_t>
__global__ void ragged_dot_kernel(TableView ta, const scalar_t* __restrict__ va, TableView tb,
                                  const scalar_t* __restrict__ vb,
                                  const index_t* __restrict__ ids_a,
                                  const index_t* __restrict__ ids_b, int64_t n,
                                  at::opmath_type<read_t<scalar_t>>* __restrict__ out,
                                  unsigned long long* bad) {
  using acc_t = at::opmath_type<read_t<scalar_t>>;
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
       i < n; i += warps) {
    const int64_t a = static_cast<int64_t>(ids_a[i]);
    const int64_t b = static_cast<int64_t>(ids_b[i]);
    const bool ok_a = valid_id(a, ta.rows, i, bad, lane);
    const bool ok_b = valid_id(b, tb.rows, i, bad, lane);
    if (!(ok_a && ok_b)) {
      if (lane == 0) out[i] = acc_t(0);
      continue;
    }
    int64_t sa = row_start(ta, a, lane);
    int64_t sb = row_start(tb, b, lane);
    unsigned long long last_a = 0, last_b = 0;
    if (!row_fits(ta, sa, row_kept(ta, a, last_a), last_a) ||
        !row_fits(tb, sb, row_kept(tb, b, last_b), last_b)) {
      record_bad_row(bad, i, lane);
      if (lane == 0) out[i] = acc_t(0);
      continue;
    }
    const Dequant<scalar_t> dqa(ta.scale_bias, a), dqb(tb.scale_bias, b);
    acc_t acc = 0;
    for (int64_t w = 0; w < ta.words; ++w) {
      const unsigned long long ma = static_cast<unsigned long long>(ta.masks[a * ta.words + w]);
      const unsigned long long mb = static_cast<unsigned long long>(tb.masks[b * tb.words + w]);
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int bit = lane + h * kWarp;
        if (((ma & mb) >> bit) & 1ull) {
          const unsigned long long below = (1ull << bit) - 1ull;
          acc += static_cast<acc_t>(dqa(va[sa + __popcll(ma & below)])) *
                 static_cast<acc_t>(dqb(vb[sb + __popcll(mb & below)]));
        }
      }
      sa += __popcll(ma);
      sb += __popcll(mb);
    }
    acc = warp_sum_float(acc);
    if (lane == 0) out[i] = acc;
  }
}

TableView view(const at::Tensor& masks, const at::Tensor& group_offsets, int64_t group_size,
               int64_t dim, const at::Tensor& values,
               const std::optional<at::Tensor>& scale_bias, const char* op) {
  TORCH_CHECK(masks.is_cuda() && values.is_cuda() && group_offsets.is_cuda(), op,
              ": table tensors must be on the GPU");
  TORCH_CHECK(masks.device() == values.device() && group_offsets.device() == values.device(),
              op, ": table tensors must be on one device");
  TORCH_CHECK(masks.dim() == 2 && masks.scalar_type() == at::kLong &&
                  masks.size(1) == (dim + 63) / 64,
              op, ": masks must be (N, ceil(dim/64)) int64, got ", masks.sizes());
  TORCH_CHECK(dim >= 1 && dim <= kMaxDim, op, ": dim must be in [1, ", kMaxDim, "], got ", dim);
  TORCH_CHECK(group_size >= 1, op, ": group_size must be >= 1");
  const int64_t groups = masks.size(0) == 0 ? 0 : (masks.size(0) - 1) / group_size + 1;
  TORCH_CHECK(group_offsets.scalar_type() == at::kLong && group_offsets.numel() == groups + 1,
              op, ": group_offsets must be (ceil(N/G)+1,) int64");
  TORCH_CHECK(values.dim() == 1, op, ": values must be 1-D, got ", values.sizes());
  TORCH_CHECK(masks.is_contiguous() && values.is_contiguous() && group_offsets.is_contiguous(),
              op, ": table tensors must be contiguous");
  int shift = -1;
  if ((group_size & (group_size - 1)) == 0) {
    shift = 0;
    while ((int64_t{1} << shift) < group_size) ++shift;
  }
  const unsigned long long high = dim % 64 == 0 ? 0ull : ~((1ull << (dim % 64)) - 1ull);
  const at::Half* sb = check_scale_bias(values, scale_bias, masks.size(0), op);
  return TableView{masks.data_ptr<int64_t>(), group_offsets.data_ptr<int64_t>(), masks.size(0),
                   masks.size(1), group_size, shift, values.numel(), high, sb};
}

void check_device(const at::Tensor& t, const at::Tensor& values, const char* op,
                  const char* what) {
  TORCH_CHECK(t.device() == values.device(), op, ": ", what, " must be on ", values.device(),
              " like the table, got ", t.device());
}

// Blocks of kWarp * kWarpsPerBlock threads for `items` lookups (bags), `per_block` of them
// per block; the kernels stride over the rest past 65535 blocks.
int blocks_for(int64_t items, int64_t per_block = kWarpsPerBlock) {
  const int64_t blocks = (items + per_block - 1) / per_block;
  return static_cast<int>(std::min<int64_t>(std::max<int64_t>(blocks, 1), 65535));
}

// Lookups (pairs) that 16 lanes of a one-word kernel serve at once (U) when the op's
// lookups_at_once is None: more rows per 16 lanes put more loads in flight but cost
// registers, and so occupancy. U = 1 was the fastest for the gather, the halves bag and
// the dot; the lanes bag's U = 4 is not yet timed (bench/README.md has the timings and
// the register counts).
constexpr int kGatherLookupsAtOnce = 1;
constexpr int kBagLookupsAtOnce = 1;
constexpr int kBagLanesLookupsAtOnce = 4;
constexpr int kDotLookupsAtOnce = 1;

// f(std::integral_constant<int, U>{}) for U = u in {1, 2, 4, 8}.
template <typename F>
void with_lookups_at_once(int u, const F& f) {
  switch (u) {
    case 1:
      f(std::integral_constant<int, 1>{});
      break;
    case 2:
      f(std::integral_constant<int, 2>{});
      break;
    case 4:
      f(std::integral_constant<int, 4>{});
      break;
    default:
      f(std::integral_constant<int, 8>{});
  }
}

// Raises naming the first bad position and its id(s), or the first lookup whose row lies
// outside the values (an inconsistent table); reading the flags is a host sync, paid only
// when check_bounds is on (without it such lookups read nothing: zero rows, zero scores).
void raise_if_bad(const at::Tensor& bad, const at::Tensor& ids, const char* op,
                  const at::Tensor* other_ids = nullptr) {
  const at::Tensor flags = bad.cpu();
  const int64_t pos = flags.data_ptr<int64_t>()[0];
  const int64_t row_pos = flags.data_ptr<int64_t>()[1];
  TORCH_CHECK_VALUE(pos != INT64_MAX || row_pos == INT64_MAX, op,
                    ": inconsistent ragged table: the row looked up at position ", row_pos,
                    " lies outside the values or keeps dims at or past dim");
  if (pos == INT64_MAX) return;
  auto id_at = [pos](const at::Tensor& t) {
    return t.reshape(-1)[pos].cpu().to(at::kLong).data_ptr<int64_t>()[0];
  };
  if (other_ids == nullptr) {
    TORCH_CHECK(false, op, ": id ", id_at(ids), " at position ", pos, " is out of range");
  }
  TORCH_CHECK(false, op, ": ids ", id_at(ids), " / ", id_at(*other_ids), " at position ", pos,
              ": one is out of range");
}

// Writes the dense rows of ids into out, a contiguous (ids.numel(), dim) buffer of the
// rows' dtype (the values', float32 for int8) on the GPU (checked by the callers).
// one_warp, u: the kernel variant (csrc/ops.cpp), u already checked.
void gather_into(const TableView& t, const at::Tensor& values, const at::Tensor& ids,
                 int64_t dim, bool check_bounds, bool one_warp, int u, const at::Tensor& out) {
  check_device(ids, values, "ragged_gather", "ids");
  check_device(out, values, "ragged_gather", "out");
  const c10::DeviceGuard guard(values.device());
  const at::Tensor ids_c = ids.contiguous();
  const int64_t n = ids_c.numel();
  if (n == 0) return;
  at::Tensor bad;
  if (check_bounds) bad = at::full({2}, INT64_MAX, ids.options().dtype(at::kLong));
  // 4-dim vector stores need dst + k0 aligned: dim % 4 == 0 and an aligned base (a
  // caller's out= buffer may start at any element)
  const bool vector_store =
      dim % kDimsPerLane == 0 &&
      reinterpret_cast<uintptr_t>(out.data_ptr()) % (kDimsPerLane * out.element_size()) == 0;
  const cudaStream_t stream = current_stream(values);
  AT_DISPATCH_FLOATING_TYPES_AND3(at::kHalf, at::kBFloat16, at::kByte, values.scalar_type(),
                                  "ragged_gather_cuda", [&] {
    AT_DISPATCH_INDEX_TYPES(ids_c.scalar_type(), "ragged_gather_cuda_ids", [&] {
      auto* bad_ptr =
          check_bounds ? reinterpret_cast<unsigned long long*>(bad.data_ptr<int64_t>()) : nullptr;
      if (t.words == 1 && !one_warp) {
        with_lookups_at_once(u, [&](auto rows) {
          constexpr int U = decltype(rows)::value;
          ragged_gather_word_kernel<U, scalar_t, index_t>
              <<<blocks_for(n, kWarp * kWarpsPerBlock / kLanesPerRow * U),
                 kWarp * kWarpsPerBlock, 0, stream>>>(
                  t, values.data_ptr<scalar_t>(), ids_c.data_ptr<index_t>(), n, dim,
                  out.data_ptr<read_t<scalar_t>>(), bad_ptr, vector_store);
        });
      } else {
        ragged_gather_kernel<scalar_t, index_t>
            <<<blocks_for(n), kWarp * kWarpsPerBlock, 0, stream>>>(
                t, values.data_ptr<scalar_t>(), ids_c.data_ptr<index_t>(), n, dim,
                out.data_ptr<read_t<scalar_t>>(), bad_ptr);
      }
    });
  });
  check_launch("ragged_gather");
  if (check_bounds) raise_if_bad(bad, ids_c, "ragged_gather");
}

at::Tensor ragged_gather_cuda(const at::Tensor& masks, const at::Tensor& values,
                              const at::Tensor& group_offsets, int64_t group_size, int64_t dim,
                              const at::Tensor& ids, bool check_bounds, bool one_warp,
                              std::optional<int64_t> lookups_at_once,
                              const std::optional<at::Tensor>& scale_bias) {
  const TableView t =
      view(masks, group_offsets, group_size, dim, values, scale_bias, "ragged_gather");
  const int u = check_lookups_at_once(lookups_at_once, kGatherLookupsAtOnce, "ragged_gather");
  std::vector<int64_t> shape(ids.sizes().begin(), ids.sizes().end());
  shape.push_back(dim);
  at::Tensor out = at::empty(shape, values.options().dtype(output_type(values)));
  gather_into(t, values, ids, dim, check_bounds, one_warp, u, out);
  return out;
}

// Into a caller's buffer; its shape, dtype, device and layout are checked in Python
// (mixemb.ops.ragged_gather) and again by the CPU kernel, here only what a launch needs.
void ragged_gather_out_cuda(const at::Tensor& masks, const at::Tensor& values,
                            const at::Tensor& group_offsets, int64_t group_size, int64_t dim,
                            const at::Tensor& ids, const at::Tensor& out, bool check_bounds,
                            bool one_warp, std::optional<int64_t> lookups_at_once,
                            const std::optional<at::Tensor>& scale_bias) {
  const TableView t =
      view(masks, group_offsets, group_size, dim, values, scale_bias, "ragged_gather_out");
  const int u =
      check_lookups_at_once(lookups_at_once, kGatherLookupsAtOnce, "ragged_gather_out");
  TORCH_CHECK(out.is_cuda() && out.is_contiguous() &&
                  out.scalar_type() == output_type(values) &&
                  out.numel() == ids.numel() * dim,
              "ragged_gather_out: out must be a contiguous GPU tensor of ", output_type(values),
              " with ids.numel() * dim = ", ids.numel() * dim, " elements, got ", out.sizes(),
              " ", out.scalar_type(), " on ", out.device());
  gather_into(t, values, ids, dim, check_bounds, one_warp, u, out);
}

// Two index tensors (ids and offsets, or the two sides' ids) as the kernels read them:
// contiguous and of one index dtype, their own when they share it (the ids are not copied
// to widen them), else both int64.
std::pair<at::Tensor, at::Tensor> same_index_type(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() == b.scalar_type()) return {a.contiguous(), b.contiguous()};
  return {a.contiguous().to(at::kLong), b.contiguous().to(at::kLong)};
}

at::Tensor ragged_bag_cuda(const at::Tensor& masks, const at::Tensor& values,
                           const at::Tensor& group_offsets, int64_t group_size, int64_t dim,
                           const at::Tensor& ids, const at::Tensor& offsets, int64_t mode,
                           const std::optional<at::Tensor>& per_sample_weights,
                           bool include_last_offset, bool check_bounds,
                           c10::string_view bag_kernel, bool one_warp,
                           std::optional<int64_t> lookups_at_once,
                           const std::optional<at::Tensor>& scale_bias) {
  const TableView t =
      view(masks, group_offsets, group_size, dim, values, scale_bias, "ragged_bag");
  const bool lanes = check_bag_kernel(bag_kernel);
  const int u = check_lookups_at_once(
      lookups_at_once, lanes ? kBagLanesLookupsAtOnce : kBagLookupsAtOnce, "ragged_bag");
  TORCH_CHECK(mode == 0 || mode == 1, "ragged_bag: mode must be 0 (sum) or 1 (mean)");
  const bool weighted = per_sample_weights.has_value() && per_sample_weights->defined();
  TORCH_CHECK(!weighted || mode == 0, "ragged_bag: per_sample_weights need mode sum");
  TORCH_CHECK(ids.dim() == 1 && offsets.dim() == 1, "ragged_bag: ids and offsets must be 1-D");
  TORCH_CHECK(!weighted || per_sample_weights->numel() == ids.numel(),
              "ragged_bag: per_sample_weights must have one weight per id");
  check_device(ids, values, "ragged_bag", "ids");
  check_device(offsets, values, "ragged_bag", "offsets");
  if (weighted) check_device(*per_sample_weights, values, "ragged_bag", "per_sample_weights");
  const c10::DeviceGuard guard(values.device());
  // int32 ids and offsets are read as they are; weights in the accumulation type (no
  // copy for float32 weights of a float32, float16, bfloat16 or int8 table)
  at::Tensor ids_c, off_c;
  std::tie(ids_c, off_c) = same_index_type(ids, offsets);
  const int64_t bags = include_last_offset ? std::max<int64_t>(off_c.numel() - 1, 0)
                                           : off_c.numel();
  if (check_bounds && off_c.numel() > 0) {  // a host sync, as for the id check
    const at::Tensor off_h = off_c.cpu().to(at::kLong);
    check_bag_offsets(off_h.data_ptr<int64_t>(), off_h.numel(), ids_c.numel());
  }
  at::Tensor out = at::empty({bags, dim}, values.options().dtype(output_type(values)));
  if (bags == 0) return out;
  at::Tensor bad;
  if (check_bounds) bad = at::full({2}, INT64_MAX, ids_c.options().dtype(at::kLong));
  const cudaStream_t stream = current_stream(values);
  AT_DISPATCH_FLOATING_TYPES_AND3(at::kHalf, at::kBFloat16, at::kByte, values.scalar_type(),
                                  "ragged_bag_cuda", [&] {
    using acc_t = at::opmath_type<read_t<scalar_t>>;
    at::Tensor w_c;
    if (weighted) {
      w_c = per_sample_weights->contiguous().to(c10::CppTypeToScalarType<acc_t>::value);
    }
    const acc_t* w_ptr = weighted ? w_c.data_ptr<acc_t>() : nullptr;
    auto* bad_ptr =
        check_bounds ? reinterpret_cast<unsigned long long*>(bad.data_ptr<int64_t>()) : nullptr;
    AT_DISPATCH_INDEX_TYPES(ids_c.scalar_type(), "ragged_bag_cuda_ids", [&] {
      if (t.words == 1 && !one_warp) {
        with_lookups_at_once(u, [&](auto rows) {
          constexpr int U = decltype(rows)::value;
          // the two one-word bag kernels take the same arguments
          const auto kernel = lanes ? ragged_bag_lanes_kernel<U, scalar_t, index_t>
                                    : ragged_bag_word_kernel<U, scalar_t, index_t>;
          kernel<<<blocks_for(bags), kWarp * kWarpsPerBlock, 0, stream>>>(
              t, values.data_ptr<scalar_t>(), ids_c.data_ptr<index_t>(),
              off_c.data_ptr<index_t>(), off_c.numel(), ids_c.numel(), bags, dim,
              static_cast<int>(mode), w_ptr, out.data_ptr<read_t<scalar_t>>(), bad_ptr);
        });
      } else {
        ragged_bag_kernel<scalar_t, index_t>
            <<<blocks_for(bags), kWarp * kWarpsPerBlock, 0, stream>>>(
                t, values.data_ptr<scalar_t>(), ids_c.data_ptr<index_t>(),
                off_c.data_ptr<index_t>(), off_c.numel(), ids_c.numel(), bags, dim,
                static_cast<int>(mode), w_ptr, out.data_ptr<read_t<scalar_t>>(), bad_ptr);
      }
    });
  });
  check_launch("ragged_bag");
  if (check_bounds) raise_if_bad(bad, ids_c, "ragged_bag");
  return out;
}

at::Tensor ragged_dot_cuda(const at::Tensor& masks_a, const at::Tensor& values_a,
                           const at::Tensor& group_offsets_a, int64_t group_size_a,
                           const at::Tensor& masks_b, const at::Tensor& values_b,
                           const at::Tensor& group_offsets_b, int64_t group_size_b, int64_t dim,
                           const at::Tensor& ids_a, const at::Tensor& ids_b, bool check_bounds,
                           bool one_warp, std::optional<int64_t> lookups_at_once,
                           const std::optional<at::Tensor>& scale_bias_a,
                           const std::optional<at::Tensor>& scale_bias_b) {
  const TableView ta = view(masks_a, group_offsets_a, group_size_a, dim, values_a, scale_bias_a,
                            "ragged_dot (table a)");
  const int u = check_lookups_at_once(lookups_at_once, kDotLookupsAtOnce, "ragged_dot");
  const TableView tb = view(masks_b, group_offsets_b, group_size_b, dim, values_b, scale_bias_b,
                            "ragged_dot (table b)");
  TORCH_CHECK(ids_a.sizes() == ids_b.sizes(), "ragged_dot: ids_a and ids_b shapes differ");
  TORCH_CHECK(values_a.scalar_type() == values_b.scalar_type(),
              "ragged_dot: both tables must have the same value dtype");
  check_device(values_b, values_a, "ragged_dot", "table b");
  check_device(ids_a, values_a, "ragged_dot", "ids_a");
  check_device(ids_b, values_a, "ragged_dot", "ids_b");
  const c10::DeviceGuard guard(values_a.device());
  at::Tensor ia, ib;  // int32 ids read as they are when both sides' are int32
  std::tie(ia, ib) = same_index_type(ids_a, ids_b);
  const auto out_type = values_a.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor out = at::empty(ids_a.sizes(), values_a.options().dtype(out_type));
  const int64_t n = ia.numel();
  if (n == 0) return out;
  at::Tensor bad;
  if (check_bounds) bad = at::full({2}, INT64_MAX, ia.options().dtype(at::kLong));
  const cudaStream_t stream = current_stream(values_a);
  AT_DISPATCH_FLOATING_TYPES_AND3(at::kHalf, at::kBFloat16, at::kByte, values_a.scalar_type(),
                                  "ragged_dot_cuda", [&] {
    auto* bad_ptr =
        check_bounds ? reinterpret_cast<unsigned long long*>(bad.data_ptr<int64_t>()) : nullptr;
    auto* out_ptr = out.data_ptr<at::opmath_type<read_t<scalar_t>>>();
    AT_DISPATCH_INDEX_TYPES(ia.scalar_type(), "ragged_dot_cuda_ids", [&] {
      if (ta.words == 1 && tb.words == 1 && !one_warp) {
        with_lookups_at_once(u, [&](auto rows) {
          constexpr int U = decltype(rows)::value;
          ragged_dot_word_kernel<U, scalar_t, index_t>
              <<<blocks_for(n, kWarp * kWarpsPerBlock / kLanesPerRow * U),
                 kWarp * kWarpsPerBlock, 0, stream>>>(
                  ta, values_a.data_ptr<scalar_t>(), tb, values_b.data_ptr<scalar_t>(),
                  ia.data_ptr<index_t>(), ib.data_ptr<index_t>(), n, out_ptr, bad_ptr);
        });
      } else {
        ragged_dot_kernel<scalar_t, index_t>
            <<<blocks_for(n), kWarp * kWarpsPerBlock, 0, stream>>>(
                ta, values_a.data_ptr<scalar_t>(), tb, values_b.data_ptr<scalar_t>(),
                ia.data_ptr<index_t>(), ib.data_ptr<index_t>(), n, out_ptr, bad_ptr);
      }
    });
  });
  check_launch("ragged_dot");
  if (check_bounds) raise_if_bad(bad, ia, "ragged_dot", &ib);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(mixemb, CUDA, m) {
  m.impl("ragged_gather", &ragged_gather_cuda);
  m.impl("ragged_gather_out", &ragged_gather_out_cuda);
  m.impl("ragged_bag", &ragged_bag_cuda);
  m.impl("ragged_dot", &ragged_dot_cuda);
}

}  // namespace mixemb
