// CPU kernel of block_gather (schema in csrc/ops.cpp): the dense rows of a block table
// (mixemb/block_table.py).
//
// A table of N rows, K columns and L frequency blocks is passed as its values (V,)
// fp32/fp16/bf16 (or uint8 codes with scale_bias (R, 2) float16), boundaries (L+1,) int64
// and its serving index: layout (L, 3) int64 (first value, first int8 row, d_l per block)
// and rank (L, K) int32 (a column's slot in its block's rows, -1 where dropped).
//
// Every call first checks the index against the boundaries and the sizes of the values —
// O(L·K), the index's own size, never O(N) or O(V) — so that an inconsistent table (a
// tensor edited or replaced behind the BlockTable's back) is a ValueError, never a read
// outside the values; the same pass turns rank into each block's list of kept columns.
// Lookups go in tiles: first each lookup's block (a branch-free binary search of the
// boundaries) and the start of its d_l values, one contiguous run, whose lines are
// prefetched; then the rows. A row is written by a 16-column AVX-512 expand per step
// (fp32 and int8 tables served as float32, on CPUs with AVX-512), else zeroed and its
// values scattered to their columns (converted to the output dtype; copied as they are
// where the dtypes agree).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "ragged_int8.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <type_traits>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#define MIXEMB_X86_64 1
#endif

namespace mixemb {
namespace {

// One block as the lookups read it.
struct Block {
  int64_t value_start;  // index in values of its first value
  int64_t row_start;    // index in scale_bias of its first row (int8 tables)
  int64_t dim;          // d_l
  int64_t cols;         // index in Index::cols of its first kept column
};

struct Index {
  std::vector<Block> blocks;  // L
  std::vector<int32_t> cols;  // Σ d_l: each block's kept columns, in increasing order
  // Per block and 16-column step (L × ceil(K/16)): the step's kept columns as bits, and
  // the slot in the block's rows of its first kept value (the AVX-512 expand).
  std::vector<uint16_t> step_bits;
  std::vector<int32_t> step_slot;
  int64_t rows = 0;  // N
};

void check_tensor(const at::Tensor& t, const char* name, int64_t dims, at::ScalarType dtype) {
  TORCH_CHECK_VALUE(t.dim() == dims && t.scalar_type() == dtype, "block_gather: ", name,
                    " must be ", dims, "-D ", dtype, ", got ", t.sizes(), " ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device().is_cpu() && t.is_contiguous(), "block_gather: ", name,
                    " must be a contiguous CPU tensor");
}

// The checked index of a table: raises a ValueError naming the first inconsistency.
// The boundaries start at 0 and increase strictly; each rank row numbers its kept columns
// 0, 1, … in column order (-1 elsewhere), so a slot is always below its block's d_l;
// layout equals what the boundaries and rank give; values and scale_bias hold exactly
// the blocks' values and int8 rows. Sums are checked for overflow (corrupt boundaries).
Index check_table(const at::Tensor& values, const std::optional<at::Tensor>& scale_bias,
                  const at::Tensor& boundaries, const at::Tensor& layout,
                  const at::Tensor& rank) {
  check_tensor(rank, "rank", 2, at::kInt);
  const int64_t num_blocks = rank.size(0), dim = rank.size(1);
  TORCH_CHECK_VALUE(num_blocks >= 1 && dim >= 1, "block_gather: rank must be (L, K) with L, K "
                    ">= 1, got ", rank.sizes());
  check_tensor(boundaries, "boundaries", 1, at::kLong);
  TORCH_CHECK_VALUE(boundaries.size(0) == num_blocks + 1, "block_gather: boundaries must be (",
                    num_blocks + 1, ",) for the ", num_blocks, " blocks of rank, got ",
                    boundaries.sizes());
  check_tensor(layout, "layout", 2, at::kLong);
  TORCH_CHECK_VALUE(layout.size(0) == num_blocks && layout.size(1) == 3,
                    "block_gather: layout must be (", num_blocks, ", 3), got ", layout.sizes());
  const at::ScalarType vt = values.scalar_type();
  TORCH_CHECK_VALUE(values.dim() == 1 && (vt == at::kFloat || vt == at::kHalf ||
                                          vt == at::kBFloat16 || vt == at::kByte),
                    "block_gather: values must be (V,) float32/float16/bfloat16 or uint8, got ",
                    values.sizes(), " ", vt);
  TORCH_CHECK_VALUE(values.device().is_cpu() && values.is_contiguous(),
                    "block_gather: values must be a contiguous CPU tensor");
  const bool int8 = vt == at::kByte;
  const bool given = scale_bias.has_value() && scale_bias->defined();
  TORCH_CHECK_VALUE(int8 == given, "block_gather: ",
                    int8 ? "an int8 table (uint8 values) needs its (R, 2) float16 scale_bias"
                         : "scale_bias is for int8 tables (uint8 values)");
  if (given) check_tensor(*scale_bias, "scale_bias", 2, at::kHalf);

  const int64_t* b = boundaries.data_ptr<int64_t>();
  const int64_t* lay = layout.data_ptr<int64_t>();
  const int32_t* rk = rank.data_ptr<int32_t>();
  TORCH_CHECK_VALUE(b[0] == 0, "block_gather: inconsistent block table: boundaries[0] = ",
                    b[0], ", not 0");
  Index ix;
  ix.blocks.resize(num_blocks);
  int64_t value_start = 0, row_start = 0;
  for (int64_t l = 0; l < num_blocks; ++l) {
    TORCH_CHECK_VALUE(b[l + 1] > b[l], "block_gather: inconsistent block table: boundaries[",
                      l + 1, "] = ", b[l + 1], " is not above boundaries[", l, "] = ", b[l]);
    const int64_t rows = b[l + 1] - b[l];
    const int64_t cols = static_cast<int64_t>(ix.cols.size());
    for (int64_t k = 0; k < dim; ++k) {
      const int32_t r = rk[l * dim + k];
      const int64_t next = static_cast<int64_t>(ix.cols.size()) - cols;
      TORCH_CHECK_VALUE(r == -1 || r == next, "block_gather: inconsistent block table: rank[",
                        l, ", ", k, "] = ", r, ", expected -1 or ", next,
                        " (a block's kept columns numbered in order)");
      if (r >= 0) ix.cols.push_back(static_cast<int32_t>(k));
    }
    const int64_t d = static_cast<int64_t>(ix.cols.size()) - cols;
    const int64_t* got = lay + 3 * l;
    TORCH_CHECK_VALUE(got[0] == value_start && got[1] == row_start && got[2] == d,
                      "block_gather: inconsistent block table: layout[", l, "] = (", got[0],
                      ", ", got[1], ", ", got[2], ") but the boundaries and rank give (",
                      value_start, ", ", row_start, ", ", d, ")");
    ix.blocks[l] = Block{value_start, row_start, d, cols};
    int64_t kept = 0;
    const bool overflow = __builtin_mul_overflow(rows, d, &kept) ||
                          __builtin_add_overflow(value_start, kept, &value_start) ||
                          __builtin_add_overflow(row_start, d > 0 ? rows : 0, &row_start);
    TORCH_CHECK_VALUE(!overflow, "block_gather: inconsistent block table: the values of blocks "
                      "0..", l, " overflow int64 (boundaries[", l + 1, "] = ", b[l + 1], ")");
  }
  TORCH_CHECK_VALUE(values.numel() == value_start, "block_gather: inconsistent block table: "
                    "the blocks keep ", value_start, " values but values holds ",
                    values.numel());
  if (given) {
    TORCH_CHECK_VALUE(scale_bias->size(0) == row_start && scale_bias->size(1) == 2,
                      "block_gather: inconsistent block table: scale_bias must be (", row_start,
                      ", 2) (a row of every block keeping a column), got ",
                      scale_bias->sizes());
  }
  ix.rows = b[num_blocks];
  const int64_t steps = (dim + 15) / 16;
  ix.step_bits.assign(num_blocks * steps, 0);
  ix.step_slot.assign(num_blocks * steps, 0);
  for (int64_t l = 0; l < num_blocks; ++l) {
    const Block& blk = ix.blocks[l];
    for (int64_t j = 0; j < blk.dim; ++j) {
      const int32_t k = ix.cols[blk.cols + j];
      ix.step_bits[l * steps + k / 16] |= static_cast<uint16_t>(1u << (k % 16));
    }
    int32_t slot = 0;
    for (int64_t q = 0; q < steps; ++q) {
      ix.step_slot[l * steps + q] = slot;
      slot += __builtin_popcount(ix.step_bits[l * steps + q]);
    }
  }
  return ix;
}

// With check_bounds, one pass over the ids (an OR of unsigned compares, which the compiler
// vectorizes); only when it finds a bad id are they walked again, to name the first.
template <typename index_t>
void check_ids(const index_t* ids, int64_t n, int64_t rows) {
  const uint64_t limit = static_cast<uint64_t>(rows);
  bool bad = false;
  for (int64_t i = 0; i < n; ++i) {
    bad |= static_cast<uint64_t>(static_cast<int64_t>(ids[i])) >= limit;
  }
  if (!bad) return;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t id = static_cast<int64_t>(ids[i]);
    TORCH_CHECK_VALUE(id >= 0 && id < rows, "block_gather: ids[", i, "] (flattened) = ", id,
                      " is outside the table's rows [0, ", rows, ")");
  }
}

// The block of a row id in [0, N): the last l < L with boundaries[l] <= id. Branch-free:
// the loop runs ceil(log2 L) times whatever the id, each step a conditional move.
inline int64_t find_block(const int64_t* bounds, int64_t num_blocks, int64_t id) {
  int64_t base = 0, len = num_blocks;
  while (len > 1) {
    const int64_t half = len / 2;
    base = bounds[base + half] <= id ? base + half : base;
    len -= half;
  }
  return base;
}

constexpr int64_t kTile = 64;  // lookups located per pass, then written

// Where the lookups [i0, i0 + count) read: block[j] (-1 for an id outside [0, N), which
// reads nothing) and local[j], the row's index in its block; the first lines of each
// row's values are prefetched, so that the tile's misses overlap.
template <typename scalar_t, typename index_t>
inline void locate(const Index& ix, const int64_t* bounds, const scalar_t* vals,
                   const index_t* ids, int64_t i0, int64_t count, int64_t* block,
                   int64_t* local) {
  const int64_t num_blocks = static_cast<int64_t>(ix.blocks.size());
  const uint64_t limit = static_cast<uint64_t>(ix.rows);
  for (int64_t j = 0; j < count; ++j) {
    const int64_t id = static_cast<int64_t>(ids[i0 + j]);
    if (static_cast<uint64_t>(id) >= limit) {
      block[j] = -1;
      continue;
    }
    const int64_t l = find_block(bounds, num_blocks, id);
    const Block& blk = ix.blocks[l];
    block[j] = l;
    local[j] = id - bounds[l];
    const char* src = reinterpret_cast<const char*>(vals + blk.value_start + local[j] * blk.dim);
    __builtin_prefetch(src);
    if (blk.dim * static_cast<int64_t>(sizeof(scalar_t)) > 64) __builtin_prefetch(src + 64);
  }
}

// The tiles of lookups [begin, end), located two at a time: while one tile's rows are
// written, the next has been located and its values prefetched, a tile ahead of their use.
// `while (at.next())` visits the tiles: lookups [i0, i0 + count), their blocks and rows.
template <typename scalar_t, typename index_t>
struct Located {
  const Index& ix;
  const int64_t* bounds;
  const scalar_t* vals;
  const index_t* ids;
  int64_t end;
  int64_t i0, count = 0;
  int64_t blocks[2][kTile], locals[2][kTile];
  int cur = 1;

  Located(const Index& ix, const int64_t* bounds, const scalar_t* vals, const index_t* ids,
          int64_t begin, int64_t end)
      : ix(ix), bounds(bounds), vals(vals), ids(ids), end(end), i0(begin - kTile) {
    locate_tile(begin, 0);
  }
  void locate_tile(int64_t at, int buffer) {
    if (at < end) {
      locate(ix, bounds, vals, ids, at, std::min(kTile, end - at), blocks[buffer],
             locals[buffer]);
    }
  }
  bool next() {
    i0 += kTile;
    if (i0 >= end) return false;
    cur ^= 1;
    count = std::min(kTile, end - i0);
    locate_tile(i0 + kTile, cur ^ 1);
    return true;
  }
  const int64_t* block() const { return blocks[cur]; }  // -1: an id outside the table
  const int64_t* local() const { return locals[cur]; }  // the row's index in its block
};

// One row: zeroed, then its d_l values scattered to their columns. A value converts
// through float (exact for every stored dtype; an int8 value is bias + q·scale in float32,
// Dequant) unless the dtypes agree, when it is copied.
template <typename scalar_t, typename out_t>
inline void write_row(const Block& blk, const int32_t* cols, const scalar_t* src,
                      const Dequant<scalar_t>& dq, int64_t dim, out_t* dst) {
  std::memset(dst, 0, dim * sizeof(out_t));  // all-zero bits: 0.0 in every float type
  for (int64_t j = 0; j < blk.dim; ++j) {
    if constexpr (std::is_same_v<scalar_t, out_t>) {
      dst[cols[j]] = src[j];
    } else {
      dst[cols[j]] = static_cast<out_t>(static_cast<float>(dq(src[j])));
    }
  }
}

// out (n, K) = the rows of ids, lookups [begin, end); an id outside [0, N) (unchecked)
// gives a zero row and reads nothing.
template <typename scalar_t, typename out_t, typename index_t>
void gather_rows(const Index& ix, const int64_t* bounds, const scalar_t* vals,
                 const at::Half* scale_bias, const index_t* ids, int64_t begin, int64_t end,
                 int64_t dim, out_t* out) {
  Located<scalar_t, index_t> at(ix, bounds, vals, ids, begin, end);
  while (at.next()) {
    const int64_t *block = at.block(), *local = at.local();
    for (int64_t j = 0; j < at.count; ++j) {
      out_t* dst = out + (at.i0 + j) * dim;
      if (block[j] < 0) {
        std::memset(dst, 0, dim * sizeof(out_t));
        continue;
      }
      const Block& blk = ix.blocks[block[j]];
      const Dequant<scalar_t> dq = blk.dim > 0
                                       ? Dequant<scalar_t>(scale_bias, blk.row_start + local[j])
                                       : Dequant<scalar_t>();
      write_row(blk, ix.cols.data() + blk.cols, vals + blk.value_start + local[j] * blk.dim, dq,
                dim, dst);
    }
  }
}

// Outputs of at least kStreamMinBytes are written with non-temporal stores on AVX-512: they
// cannot stay in a core's L2 for the consumer anyway, and each line is then written without
// first being read. Not from kStreamMaxBytes up: glibc serves such blocks as fresh mmaps,
// whose pages the kernel zeroes through the cache on first touch (csrc/ragged_cpu.cpp).
constexpr int64_t kStreamMinBytes = int64_t{1} << 21;
constexpr int64_t kStreamMaxBytes = int64_t{32} << 20;

#ifdef MIXEMB_X86_64
const bool kHasAvx512 = __builtin_cpu_supports("avx512f") &&
                        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");

#define MIXEMB_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,f16c"), always_inline))

// The next `kept` values from src (the others are not read, so the end of the values needs
// no care) as float32 lanes: exact for fp32, fp16 and bf16; an int8 code dequantized as
// bias + q·scale, a multiply then an add (the reference's two roundings, not an FMA).
MIXEMB_AVX512 inline __m512 load16(const float* src, __mmask16 kept, __m512, __m512) {
  return _mm512_maskz_loadu_ps(kept, src);
}
MIXEMB_AVX512 inline __m512 load16(const at::Half* src, __mmask16 kept, __m512, __m512) {
  return _mm512_maskz_cvtph_ps(0xFFFF, _mm256_maskz_loadu_epi16(kept, src));
}
MIXEMB_AVX512 inline __m512 load16(const at::BFloat16* src, __mmask16 kept, __m512, __m512) {
  const __m512i wide = _mm512_maskz_cvtepu16_epi32(0xFFFF, _mm256_maskz_loadu_epi16(kept, src));
  return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(0xFFFF, wide, 16));
}
MIXEMB_AVX512 inline __m512 load16(const uint8_t* src, __mmask16 kept, __m512 scale,
                                   __m512 bias) {
  const __m128i q = _mm_maskz_loadu_epi8(kept, src);
  const __m512 f = _mm512_maskz_cvtepi32_ps(0xFFFF, _mm512_maskz_cvtepu8_epi32(0xFFFF, q));
  return _mm512_add_ps(bias, _mm512_mul_ps(f, scale));
}

// (The zero-masking forms of whole-vector conversions and shifts throughout: GCC 12's
// unmasked ones trip -Wmaybe-uninitialized inside its own header.)

// dst[0:16) = x in out_t (only the `lanes` lanes; all 16 when streaming), rounded to
// nearest even as c10's conversions from float round (tables hold no NaN).
MIXEMB_AVX512 inline void store16(float* dst, __m512 x, __mmask16 lanes, bool stream) {
  if (stream) {
    _mm512_stream_ps(dst, x);
  } else {
    _mm512_mask_storeu_ps(dst, lanes, x);
  }
}
MIXEMB_AVX512 inline void store_half16(void* dst, __m256i h, __mmask16 lanes, bool stream) {
  if (stream) {
    _mm256_stream_si256(reinterpret_cast<__m256i*>(dst), h);
  } else {
    _mm256_mask_storeu_epi16(dst, lanes, h);
  }
}
MIXEMB_AVX512 inline void store16(at::Half* dst, __m512 x, __mmask16 lanes, bool stream) {
  const __m256i h = _mm512_maskz_cvtps_ph(0xFFFF, x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  store_half16(dst, h, lanes, stream);
}
MIXEMB_AVX512 inline void store16(at::BFloat16* dst, __m512 x, __mmask16 lanes, bool stream) {
  const __m512i u = _mm512_castps_si512(x);
  const __m512i odd =
      _mm512_and_si512(_mm512_maskz_srli_epi32(0xFFFF, u, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_add_epi32(u, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF)));
  const __m512i high = _mm512_maskz_srli_epi32(0xFFFF, rounded, 16);
  store_half16(dst, _mm512_maskz_cvtepi32_epi16(0xFFFF, high), lanes, stream);
}

// gather_rows on AVX-512 (float32, float16 and bfloat16 outputs): a row is ceil(K/16)
// steps of a masked load of the step's kept values, one expand to their columns (zeros
// elsewhere) and a store — no zeroing pass and no per-value loop. With `stream` (dst
// 64-byte aligned, K a multiple of 16) the stores are non-temporal; the caller fences.
template <typename scalar_t, typename out_t, typename index_t>
__attribute__((target("avx512f,avx512bw,avx512vl,f16c"))) void gather_rows_avx512(
    const Index& ix, const int64_t* bounds, const scalar_t* vals, const at::Half* scale_bias,
    const index_t* ids, int64_t begin, int64_t end, int64_t dim, bool stream, out_t* out) {
  const int64_t steps = (dim + 15) / 16;
  const __mmask16 tail = static_cast<__mmask16>(dim % 16 ? (1u << (dim % 16)) - 1 : 0xFFFF);
  Located<scalar_t, index_t> at(ix, bounds, vals, ids, begin, end);
  while (at.next()) {
    const int64_t *block = at.block(), *local = at.local();
    for (int64_t j = 0; j < at.count; ++j) {
      out_t* dst = out + (at.i0 + j) * dim;
      const int64_t l = block[j];
      if (l < 0) {  // an id outside the table: a zero row, nothing read
        for (int64_t q = 0; q < steps; ++q) {
          store16(dst + 16 * q, _mm512_setzero_ps(), q + 1 < steps ? 0xFFFF : tail, stream);
        }
        continue;
      }
      const uint16_t* bits = ix.step_bits.data() + l * steps;
      const int32_t* slot = ix.step_slot.data() + l * steps;
      const Block& blk = ix.blocks[l];
      const scalar_t* src = vals + blk.value_start + local[j] * blk.dim;
      __m512 scale = _mm512_setzero_ps(), bias = _mm512_setzero_ps();
      if constexpr (std::is_same_v<scalar_t, uint8_t>) {
        if (blk.dim > 0) {
          const Dequant<uint8_t> dq(scale_bias, blk.row_start + local[j]);
          scale = _mm512_set1_ps(dq.scale);
          bias = _mm512_set1_ps(dq.bias);
        }
      }
      for (int64_t q = 0; q < steps; ++q) {
        const uint32_t b = bits[q];
        const __mmask16 kept = static_cast<__mmask16>((1u << __builtin_popcount(b)) - 1);
        const __m512 x = _mm512_maskz_expand_ps(static_cast<__mmask16>(b),
                                                load16(src + slot[q], kept, scale, bias));
        store16(dst + 16 * q, x, q + 1 < steps ? 0xFFFF : tail, stream);
      }
    }
  }
  if (stream) _mm_sfence();  // this thread's streamed rows are visible after the op
}
#endif

// The rows of ids[0:n) into out, in parallel over the lookups.
template <typename scalar_t, typename out_t, typename index_t>
void gather(const Index& ix, const int64_t* bounds, const scalar_t* vals,
            const at::Half* scale_bias, const index_t* ids, int64_t n, int64_t dim, out_t* out) {
#ifdef MIXEMB_X86_64
  const int64_t out_bytes = n * dim * static_cast<int64_t>(sizeof(out_t));
  const bool stream = dim % 16 == 0 && reinterpret_cast<uintptr_t>(out) % 64 == 0 &&
                      out_bytes >= kStreamMinBytes && out_bytes < kStreamMaxBytes;
#endif
  at::parallel_for(0, n, 512, [&](int64_t begin, int64_t end) {
#ifdef MIXEMB_X86_64
    if constexpr (!std::is_same_v<out_t, double> && !std::is_same_v<scalar_t, double>) {
      if (kHasAvx512) {
        gather_rows_avx512(ix, bounds, vals, scale_bias, ids, begin, end, dim, stream, out);
        return;
      }
    }
#endif
    gather_rows(ix, bounds, vals, scale_bias, ids, begin, end, dim, out);
  });
}

at::Tensor block_gather_cpu(const at::Tensor& values, const std::optional<at::Tensor>& scale_bias,
                            const at::Tensor& boundaries, const at::Tensor& layout,
                            const at::Tensor& rank, const at::Tensor& ids,
                            std::optional<at::ScalarType> out_dtype, bool check_bounds) {
  const Index ix = check_table(values, scale_bias, boundaries, layout, rank);
  TORCH_CHECK_VALUE(ids.scalar_type() == at::kLong || ids.scalar_type() == at::kInt,
                    "block_gather: ids must be int32 or int64, got ", ids.scalar_type());
  TORCH_CHECK_VALUE(ids.device().is_cpu(), "block_gather: ids must be a CPU tensor, got ",
                    ids.device());
  const at::ScalarType ot = out_dtype.value_or(output_type(values));
  TORCH_CHECK_VALUE(ot == at::kFloat || ot == at::kHalf || ot == at::kBFloat16 ||
                        ot == at::kDouble,
                    "block_gather: out_dtype must be a float dtype, got ", ot);
  const int64_t dim = rank.size(1);
  std::vector<int64_t> shape(ids.sizes().begin(), ids.sizes().end());
  shape.push_back(dim);
  at::Tensor out = at::empty(shape, values.options().dtype(ot));
  const at::Tensor ids_c = ids.contiguous();
  const int64_t n = ids_c.numel();
  const int64_t* bounds = boundaries.data_ptr<int64_t>();
  const at::Half* sb = scale_bias.has_value() && scale_bias->defined()
                           ? scale_bias->data_ptr<at::Half>()
                           : nullptr;
  AT_DISPATCH_INDEX_TYPES(ids_c.scalar_type(), "block_gather_cpu_ids", [&] {
    const index_t* idp = ids_c.data_ptr<index_t>();
    if (check_bounds) check_ids(idp, n, ix.rows);
    AT_DISPATCH_FLOATING_TYPES_AND3(at::kHalf, at::kBFloat16, at::kByte, values.scalar_type(),
                                    "block_gather_cpu", [&] {
      using value_t = scalar_t;
      const value_t* vals = values.data_ptr<value_t>();
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, ot, "block_gather_cpu_out", [&] {
        gather<value_t, scalar_t, index_t>(ix, bounds, vals, sb, idp, n, dim,
                                           out.data_ptr<scalar_t>());
      });
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(mixemb, CPU, m) { m.impl("block_gather", &block_gather_cpu); }

}  // namespace mixemb
