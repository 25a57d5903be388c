// CPU kernels of the ragged serving ops (schemas in csrc/ops.cpp).
//
// Locating a row's values: base = group_offsets[row / G] plus the popcounts of the masks of
// the (at most G-1) rows before it in its group; a kept dim's slot adds the popcount of the
// row's mask bits below it. Only kept values are read. int8 tables (uint8 values plus a
// per-row scale and bias, csrc/ragged_int8.h) are dequantized as they are read, into float32
// rows, bags and scores.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "ragged_checks.h"
#include "ragged_int8.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#if defined(__x86_64__)
#include <immintrin.h>
#define MIXEMB_X86_64 1
#endif

namespace mixemb {
namespace {

struct Table {
  const int64_t* masks;
  const int64_t* group_offsets;
  int64_t rows;
  int64_t words;
  int64_t group_size;
  int shift;      // log2(group_size) when it is a power of two (the default 16), else -1
  int64_t nnz;    // values.numel()
  uint64_t high;  // the bits of a row's last mask word at or past dim (must be clear)
  const at::Half* scale_bias;  // (rows, 2) of an int8 table, else null
};

__attribute__((always_inline)) inline int popcount64(int64_t x) {
  return __builtin_popcountll(static_cast<uint64_t>(x));
}

// Sum of the popcounts of masks[0 .. rel), rel < 16, for one-word rows (declared here,
// defined with the vector paths below; -1 when this CPU has no AVX512-VPOPCNTDQ).
inline int64_t group_prefix16(const int64_t* masks, int64_t rel);

// Index in `values` of the first kept value of `row`. Shifts instead of two 64-bit
// divisions per lookup when the group size is a power of two; one-word rows of groups of
// at most 16 take a branch-free vector popcount where the CPU has one. The sum is
// unsigned so that a corrupt group offset near INT64_MAX wraps (and then fails row_fits)
// instead of overflowing.
inline int64_t row_start(const Table& t, int64_t row) {
  if (t.words == 1 && t.shift >= 0 && t.shift <= 4) {
    const int64_t first = row & ~((int64_t{1} << t.shift) - 1);
    const int64_t prefix = group_prefix16(t.masks + first, row - first);
    if (prefix >= 0) {
      return static_cast<int64_t>(static_cast<uint64_t>(t.group_offsets[row >> t.shift]) +
                                  static_cast<uint64_t>(prefix));
    }
  }
  const int64_t group = t.shift >= 0 ? row >> t.shift : row / t.group_size;
  uint64_t start = static_cast<uint64_t>(t.group_offsets[group]);
  const int64_t first = t.shift >= 0 ? group << t.shift : group * t.group_size;
  if (t.words == 1) {
    for (int64_t r = first; r < row; ++r) start += popcount64(t.masks[r]);
    return static_cast<int64_t>(start);
  }
  for (int64_t r = first; r < row; ++r) {
    for (int64_t w = 0; w < t.words; ++w) start += popcount64(t.masks[r * t.words + w]);
  }
  return static_cast<int64_t>(start);
}

// Whether row `row` (in range), located at `start` with `count` kept values, lies inside
// the values and keeps no dim at or past dim. A consistent table always passes; a corrupt
// one (values replaced, group offsets or masks edited) must fail here before a value is
// read or an output dim is written: one compare pair and one AND per lookup, on lines
// the lookup has already loaded.
__attribute__((always_inline)) inline bool row_fits(const Table& t, int64_t row, int64_t start,
                                                    int64_t count) {
  return start >= 0 && start <= t.nnz - count &&
         (static_cast<uint64_t>(t.masks[(row + 1) * t.words - 1]) & t.high) == 0;
}

// Raises the error for a row that fails row_fits (out of line: the hot loops only test).
[[noreturn]] __attribute__((noinline, cold)) void raise_bad_row(const Table& t, int64_t row,
                                                                 int64_t start, int64_t count,
                                                                 const char* op) {
  TORCH_CHECK_VALUE(
      (static_cast<uint64_t>(t.masks[(row + 1) * t.words - 1]) & t.high) == 0, op,
      ": inconsistent ragged table: the mask of row ", row, " keeps dims at or past dim");
  TORCH_CHECK_VALUE(false, op, ": inconsistent ragged table: row ", row, " would read values [",
                    start, ", ", start, " + ", count, ") but there are ", t.nnz,
                    " (group_offsets, masks and values do not match)");
}

// Scatters the kept values of mask word `m` into a zeroed 64-dim slice, a byte (8 dims)
// at a time: empty bytes (rare rows) and full bytes (hot rows) take one predictable
// branch each; only mixed bytes walk their bits. `dq` reads a value (the row's
// dequantization for int8; the value itself for float tables, whose full bytes are copied).
template <typename scalar_t>
inline void scatter_word(uint64_t m, const scalar_t*& src, read_t<scalar_t>* dst,
                         const Dequant<scalar_t>& dq) {
  for (int j = 0; m; ++j, m >>= 8) {
    uint32_t b = static_cast<uint32_t>(m & 0xFF);
    if (b == 0) continue;
    read_t<scalar_t>* d = dst + 8 * j;
    if (b == 0xFF) {
      if constexpr (std::is_same_v<scalar_t, read_t<scalar_t>>) {
        std::memcpy(d, src, 8 * sizeof(scalar_t));
      } else {
        for (int e = 0; e < 8; ++e) d[e] = dq(src[e]);
      }
      src += 8;
      continue;
    }
    do {
      d[__builtin_ctz(b)] = dq(*src++);
      b &= b - 1;
    } while (b);
  }
}

#ifdef MIXEMB_X86_64
// For each 8-bit slice b of a mask: where each of the 8 output lanes takes its value from
// (the j-th kept dim takes the j-th next value) and which lanes are kept at all.
struct ExpandTable {
  alignas(32) int32_t perm[256][8];
  alignas(32) int32_t keep[256][8];
  ExpandTable() {
    for (int b = 0; b < 256; ++b) {
      int next = 0;
      for (int j = 0; j < 8; ++j) {
        const bool on = (b >> j) & 1;
        perm[b][j] = on ? next : 0;
        keep[b][j] = on ? -1 : 0;
        next += on;
      }
    }
  }
};

const ExpandTable& expand_table() {
  static const ExpandTable table;
  return table;
}

// The widest vector path this CPU runs: 2 = AVX-512, 1 = AVX2, 0 = scalar.
// MIXEMB_CPU_ISA=avx2|scalar caps it, read once when the library loads like ATen's
// ATEN_CPU_CAPABILITY (tests use that to check every path on one machine).
int detect_isa() {
  int isa = 0;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt")) isa = 1;
  if (isa == 1 && __builtin_cpu_supports("avx512f")) isa = 2;
  const char* cap = std::getenv("MIXEMB_CPU_ISA");
  if (cap != nullptr && std::strcmp(cap, "avx2") == 0) isa = std::min(isa, 1);
  if (cap != nullptr && std::strcmp(cap, "scalar") == 0) isa = 0;
  return isa;
}

const int kIsa = detect_isa();
const bool kHasAvx2 = kIsa >= 1;
const bool kHasAvx512 = kIsa >= 2;

const bool kHasVpopcnt = kIsa >= 2 && __builtin_cpu_supports("avx512vpopcntdq");

// Orders this thread's non-temporal stores before whatever follows.
inline void store_fence() { _mm_sfence(); }

// Masked loads of the group's first 16 masks (lanes >= rel are neither read nor counted,
// so a short last group is safe), a masked popcount per lane, then the eight lane sums (at
// most 128 each) packed to bytes and added by one sum of absolute differences: a dozen
// instructions and no data-dependent branch, instead of up to 15 load-popcount-adds
// behind a loop exit the branch predictor cannot guess.
__attribute__((target("avx512f,avx512vpopcntdq"))) inline int64_t group_prefix16_avx512(
    const int64_t* masks, int64_t rel) {
  const uint32_t lanes = (1u << rel) - 1;
  const __mmask8 lo = static_cast<__mmask8>(lanes), hi = static_cast<__mmask8>(lanes >> 8);
  const __m512i a = _mm512_popcnt_epi64(_mm512_maskz_loadu_epi64(lo, masks));
  const __m512i b = _mm512_popcnt_epi64(_mm512_maskz_loadu_epi64(hi, masks + 8));
  // the zero-masking forms because GCC 12's unmasked ones trip -Wuninitialized inside its
  // own header
  const __m128i packed = _mm512_maskz_cvtepi64_epi8(0xFF, _mm512_add_epi64(a, b));
  return _mm_cvtsi128_si64(_mm_sad_epu8(packed, _mm_setzero_si128()));
}

inline int64_t group_prefix16(const int64_t* masks, int64_t rel) {
  return kHasVpopcnt ? group_prefix16_avx512(masks, rel) : -1;
}

// Mask bits of dims [k, k + 16) of a row (k a multiple of 16).
inline uint32_t mask_bits16(const int64_t* mask_row, int64_t k) {
  const uint64_t m = static_cast<uint64_t>(mask_row[k >> 6]);
  return static_cast<uint32_t>((m >> (k & 63)) & 0xFFFF);
}

// The next popcount(bits) values from `src` placed at the set lanes of `bits`, zeros
// elsewhere: a masked load (lanes past the kept values are not read, so the end of
// `values` needs no care) and vexpandps.
__attribute__((target("avx512f,popcnt"))) inline __m512 expand16(uint32_t bits,
                                                                 const float* src) {
  const int kept = __builtin_popcount(bits);
  const __m512 v = _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << kept) - 1), src);
  return _mm512_maskz_expand_ps(static_cast<__mmask16>(bits), v);
}

// dst[k : k + 16) = x, the lanes at or past dim left alone; with `stream` (dst 64-byte
// aligned, dim a multiple of 16) a non-temporal store.
__attribute__((target("avx512f"), always_inline)) inline void store16(float* dst, int64_t k,
                                                                     int64_t dim, __m512 x,
                                                                     bool stream) {
  if (stream) {
    _mm512_stream_ps(dst + k, x);
  } else if (k + 16 <= dim) {
    _mm512_storeu_ps(dst + k, x);
  } else {
    _mm512_mask_storeu_ps(dst + k, static_cast<__mmask16>((1u << (dim - k)) - 1), x);
  }
}

// AVX-512 rows, 16 dims a step: expand16, then one store — a few instructions per 16 dims
// at any density. With `stream` (dst 64-byte aligned, dim a multiple of 16) the stores are
// non-temporal: a large output is written without first reading each line into the cache,
// which halves the memory traffic of the write; the caller fences.
__attribute__((target("avx512f,popcnt"))) void expand_row_avx512(const int64_t* mask_row,
                                                                 int64_t dim, const float* src,
                                                                 float* dst, bool stream) {
  for (int64_t k = 0; k < dim; k += 16) {
    const uint32_t bits = mask_bits16(mask_row, k);
    store16(dst, k, dim, expand16(bits, src), stream);
    src += __builtin_popcount(bits);
  }
}

// acc[k : k + 16) += x, the lanes at or past dim left alone.
__attribute__((target("avx512f"), always_inline)) inline void add16(float* acc, int64_t k,
                                                                   int64_t dim, __m512 x) {
  const __mmask16 lanes = k + 16 <= dim ? static_cast<__mmask16>(0xFFFF)
                                        : static_cast<__mmask16>((1u << (dim - k)) - 1);
  _mm512_mask_storeu_ps(acc + k, lanes, _mm512_add_ps(_mm512_maskz_loadu_ps(lanes, acc + k), x));
}

// acc[0:dim] += scale * (the row expanded), 16 dims a step as in expand_row_avx512; steps
// with no kept dim are skipped.
__attribute__((target("avx512f,popcnt"))) void accumulate_row_avx512(const int64_t* mask_row,
                                                                     int64_t dim,
                                                                     const float* src,
                                                                     float scale, float* acc) {
  const __m512 s = _mm512_set1_ps(scale);
  for (int64_t k = 0; k < dim; k += 16) {
    const uint32_t bits = mask_bits16(mask_row, k);
    if (bits == 0) continue;
    const __m512 x = _mm512_mul_ps(expand16(bits, src), s);
    add16(acc, k, dim, x);
    src += __builtin_popcount(bits);
  }
}

// The next popcount(b) of the 8 values at `src` permuted to the set lanes of the byte `b`,
// zeros elsewhere (all 8 values must be readable).
__attribute__((target("avx2,popcnt"))) inline __m256 permute8(const ExpandTable& lut,
                                                              uint32_t b, const float* src) {
  const __m256i p = _mm256_load_si256(reinterpret_cast<const __m256i*>(lut.perm[b]));
  const __m256 keep =
      _mm256_castsi256_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(lut.keep[b])));
  return _mm256_and_ps(_mm256_permutevar8x32_ps(_mm256_loadu_ps(src), p), keep);
}

// Rows keeping at most this many of a word's 64 dims are written as zeros plus a scatter
// of their values (one iteration per kept dim); denser words are permuted 8 dims a step.
constexpr int kSparseWord = 16;

// One fp32 output row, one 64-dim mask word at a time:
// * every dim kept (hot rows): a straight copy;
// * few kept: 8-float zero stores, then each kept value to its dim;
// * otherwise 8 dims per step: load the next 8 values, permute them to their dims, zero
//   the pruned lanes, store 8 floats (near the end of `values`, fewer than 8 readable,
//   it steps scalar).
__attribute__((target("avx2,popcnt"))) void expand_row_avx2(const int64_t* mask_row,
                                                             int64_t dim, const float* src,
                                                             const float* end, float* dst) {
  const ExpandTable& lut = expand_table();
  for (int64_t base = 0; base < dim; base += 64) {
    const int64_t width = std::min<int64_t>(64, dim - base);
    uint64_t m = static_cast<uint64_t>(mask_row[base >> 6]);
    float* d = dst + base;
    const int kept = __builtin_popcountll(m);
    if (width == 64 && kept == 64) {
      for (int k = 0; k < 64; k += 8) _mm256_storeu_ps(d + k, _mm256_loadu_ps(src + k));
      src += 64;
      continue;
    }
    if (kept <= kSparseWord) {
      if (width == 64) {  // spelled out: GCC turns a zeroing loop into a slow `rep stos`
        const __m256 z = _mm256_setzero_ps();
        _mm256_storeu_ps(d, z);
        _mm256_storeu_ps(d + 8, z);
        _mm256_storeu_ps(d + 16, z);
        _mm256_storeu_ps(d + 24, z);
        _mm256_storeu_ps(d + 32, z);
        _mm256_storeu_ps(d + 40, z);
        _mm256_storeu_ps(d + 48, z);
        _mm256_storeu_ps(d + 56, z);
      } else {
        for (int64_t k = 0; k < width; ++k) d[k] = 0.f;
      }
      for (; m; m &= m - 1) d[__builtin_ctzll(m)] = *src++;
      continue;
    }
    for (int64_t k = 0; k < width; k += 8) {
      const uint32_t b = static_cast<uint32_t>((m >> k) & 0xFF);
      if (k + 8 <= width && src + 8 <= end) {
        _mm256_storeu_ps(d + k, permute8(lut, b, src));
      } else {
        int next = 0;
        for (int64_t j = 0; j < 8 && k + j < width; ++j) {
          d[k + j] = ((b >> j) & 1) ? src[next++] : 0.f;
        }
      }
      src += __builtin_popcount(b);
    }
  }
}

// acc[0:dim] += scale * (the row expanded to dim lanes), for bags, one 64-dim mask word at
// a time as in expand_row_avx2: a full word is 8 vector multiply-adds, a sparse one a scalar
// update per kept dim, the rest 8 dims per permute step.
__attribute__((target("avx2,popcnt"))) void accumulate_row_avx2(const int64_t* mask_row,
                                                                 int64_t dim, const float* src,
                                                                 const float* end, float scale,
                                                                 float* acc) {
  const ExpandTable& lut = expand_table();
  const __m256 s = _mm256_set1_ps(scale);
  for (int64_t base = 0; base < dim; base += 64) {
    const int64_t width = std::min<int64_t>(64, dim - base);
    uint64_t m = static_cast<uint64_t>(mask_row[base >> 6]);
    float* a = acc + base;
    const int kept = __builtin_popcountll(m);
    if (width == 64 && kept == 64) {
      for (int k = 0; k < 64; k += 8) {
        _mm256_storeu_ps(a + k, _mm256_add_ps(_mm256_loadu_ps(a + k),
                                              _mm256_mul_ps(_mm256_loadu_ps(src + k), s)));
      }
      src += 64;
      continue;
    }
    if (kept <= kSparseWord) {
      for (; m; m &= m - 1) a[__builtin_ctzll(m)] += scale * *src++;
      continue;
    }
    for (int64_t k = 0; k < width; k += 8) {
      const uint32_t b = static_cast<uint32_t>((m >> k) & 0xFF);
      if (b == 0) continue;
      if (k + 8 <= width && src + 8 <= end) {
        const __m256 x = permute8(lut, b, src);
        _mm256_storeu_ps(a + k, _mm256_add_ps(_mm256_loadu_ps(a + k), _mm256_mul_ps(x, s)));
      } else {
        int next = 0;
        for (int64_t j = 0; j < 8 && k + j < width; ++j) {
          if ((b >> j) & 1) a[k + j] += scale * src[next++];
        }
      }
      src += __builtin_popcount(b);
    }
  }
}
#else
const bool kHasAvx512 = false;  // gathers stream their output only on AVX-512
inline void store_fence() {}
inline int64_t group_prefix16(const int64_t*, int64_t) { return -1; }
#endif

#ifdef MIXEMB_X86_64
template <typename index_t>
__attribute__((target("avx512f"))) bool any_bad_id_avx512(const index_t* ids, int64_t n,
                                                         uint64_t limit) {
  constexpr int64_t kLanes = 64 / sizeof(index_t);
  uint32_t bad = 0;
  int64_t i = 0;
  if constexpr (sizeof(index_t) == 8) {
    const __m512i lim = _mm512_set1_epi64(static_cast<int64_t>(limit));
    for (; i + kLanes <= n; i += kLanes) {
      bad |= _mm512_cmpge_epu64_mask(_mm512_loadu_si512(ids + i), lim);
    }
  } else {
    // a negative int32 reads as 2^31 or more: past any limit it can be held to
    const __m512i lim =
        _mm512_set1_epi32(static_cast<int32_t>(std::min<uint64_t>(limit, uint64_t{1} << 31)));
    for (; i + kLanes <= n; i += kLanes) {
      bad |= _mm512_cmpge_epu32_mask(_mm512_loadu_si512(ids + i), lim);
    }
  }
  for (; i < n; ++i) bad |= static_cast<uint64_t>(static_cast<int64_t>(ids[i])) >= limit;
  return bad != 0;
}
#endif

// Whether any of ids[0:n) is outside [0, rows): an OR of unsigned compares, 8 or 16 ids a
// step on AVX-512.
template <typename index_t>
bool any_bad_id(const index_t* ids, int64_t n, int64_t rows) {
  const uint64_t limit = static_cast<uint64_t>(rows);
#ifdef MIXEMB_X86_64
  if (kHasAvx512) return any_bad_id_avx512(ids, n, limit);
#endif
  bool bad = false;
  for (int64_t i = 0; i < n; ++i) {
    bad |= static_cast<uint64_t>(static_cast<int64_t>(ids[i])) >= limit;
  }
  return bad;
}

// Vectorised bag accumulation where there is one (fp32 on an AVX2 / AVX-512 CPU; int8 rows
// have theirs, accumulate_row_int8); false otherwise.
template <typename scalar_t, typename acc_t>
inline bool accumulate_row_fast(const int64_t*, int64_t, const scalar_t*, const scalar_t*,
                                acc_t, acc_t*) {
  return false;
}

template <>
inline bool accumulate_row_fast<float, float>(const int64_t* mask_row, int64_t dim,
                                              const float* src, const float* end, float scale,
                                              float* acc) {
#ifdef MIXEMB_X86_64
  if (kHasAvx512) {
    accumulate_row_avx512(mask_row, dim, src, scale, acc);
    return true;
  }
  if (kHasAvx2) {
    accumulate_row_avx2(mask_row, dim, src, end, scale, acc);
    return true;
  }
#endif
  return false;
}

// The vectorised row expansion where there is one (fp32 on an AVX2 / AVX-512 CPU; int8
// rows have theirs, expand_row_int8); false otherwise.
template <typename scalar_t, typename out_t>
inline bool expand_row_fast(const int64_t*, int64_t, const scalar_t*, const scalar_t*, out_t*,
                            bool) {
  return false;
}

template <>
inline bool expand_row_fast<float, float>(const int64_t* mask_row, int64_t dim, const float* src,
                                   const float* end, float* dst, bool stream) {
#ifdef MIXEMB_X86_64
  if (kHasAvx512) {
    expand_row_avx512(mask_row, dim, src, dst, stream);
    return true;
  }
  if (kHasAvx2) {
    expand_row_avx2(mask_row, dim, src, end, dst);
    return true;
  }
#endif
  return false;
}

// int8 rows (uint8 values, csrc/ragged_int8.h): one row dequantized into a float32 output
// row, or added (times a weight) to a bag's float32 sum. On AVX-512 (with BW for the masked
// byte load) 16 dims a step as expand16 does for fp32, the bytes widened to floats and
// dequantized (a multiply, then an add: the reference's rounding) before the expand.
#ifdef MIXEMB_X86_64
const bool kHasAvx512Bytes =
    kHasAvx512 && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");

// The next popcount(bits) int8 values from `src`, dequantized, at the set lanes of `bits`,
// zeros elsewhere (lanes past the kept values are not read).
__attribute__((target("avx512f,avx512bw,avx512vl,popcnt"))) inline __m512 expand16_int8(
    uint32_t bits, const uint8_t* src, __m512 scale, __m512 bias) {
  const int kept = __builtin_popcount(bits);
  const __m128i q = _mm_maskz_loadu_epi8(static_cast<__mmask16>((1u << kept) - 1), src);
  // the zero-masking conversions: GCC 12's unmasked ones trip -Wuninitialized in its header
  const __m512 f = _mm512_maskz_cvtepi32_ps(0xFFFF, _mm512_maskz_cvtepu8_epi32(0xFFFF, q));
  const __m512 x = _mm512_add_ps(bias, _mm512_mul_ps(f, scale));
  return _mm512_maskz_expand_ps(static_cast<__mmask16>(bits), x);
}

__attribute__((target("avx512f,avx512bw,avx512vl,popcnt"))) void expand_row_int8_avx512(
    const int64_t* mask_row, int64_t dim, const uint8_t* src, float scale, float bias,
    float* dst) {
  const __m512 s = _mm512_set1_ps(scale), b = _mm512_set1_ps(bias);
  for (int64_t k = 0; k < dim; k += 16) {
    const uint32_t bits = mask_bits16(mask_row, k);
    const __m512 x = expand16_int8(bits, src, s, b);
    if (k + 16 <= dim) {
      _mm512_storeu_ps(dst + k, x);
    } else {
      _mm512_mask_storeu_ps(dst + k, static_cast<__mmask16>((1u << (dim - k)) - 1), x);
    }
    src += __builtin_popcount(bits);
  }
}

__attribute__((target("avx512f,avx512bw,avx512vl,popcnt"))) void accumulate_row_int8_avx512(
    const int64_t* mask_row, int64_t dim, const uint8_t* src, float scale, float bias,
    float weight, float* acc) {
  const __m512 s = _mm512_set1_ps(scale), b = _mm512_set1_ps(bias), w = _mm512_set1_ps(weight);
  for (int64_t k = 0; k < dim; k += 16) {
    const uint32_t bits = mask_bits16(mask_row, k);
    if (bits == 0) continue;
    const __m512 x = _mm512_mul_ps(expand16_int8(bits, src, s, b), w);
    add16(acc, k, dim, x);
    src += __builtin_popcount(bits);
  }
}
#endif

// The vectorised int8 row (its values from `src`, dequantized by dq) into dst[0:dim], zeros
// at pruned dims, where the CPU has one; false otherwise (and for float tables).
template <typename scalar_t, typename out_t>
inline bool expand_row_int8(const int64_t*, int64_t, const scalar_t*, const Dequant<scalar_t>&,
                            out_t*) {
  return false;
}

inline bool expand_row_int8(const int64_t* mask_row, int64_t dim, const uint8_t* src,
                            const Dequant<uint8_t>& dq, float* dst) {
#ifdef MIXEMB_X86_64
  if (kHasAvx512Bytes) {
    expand_row_int8_avx512(mask_row, dim, src, dq.scale, dq.bias, dst);
    return true;
  }
#endif
  return false;
}

// acc[0:dim] += weight * (the int8 row), vectorised where the CPU can; false otherwise.
template <typename scalar_t, typename acc_t>
inline bool accumulate_row_int8(const int64_t*, int64_t, const scalar_t*,
                                const Dequant<scalar_t>&, acc_t, acc_t*) {
  return false;
}

inline bool accumulate_row_int8(const int64_t* mask_row, int64_t dim, const uint8_t* src,
                                const Dequant<uint8_t>& dq, float weight, float* acc) {
#ifdef MIXEMB_X86_64
  if (kHasAvx512Bytes) {
    accumulate_row_int8_avx512(mask_row, dim, src, dq.scale, dq.bias, weight, acc);
    return true;
  }
#endif
  return false;
}

Table check_table(const at::Tensor& masks, const at::Tensor& values,
                  const at::Tensor& group_offsets, int64_t group_size, int64_t dim,
                  const std::optional<at::Tensor>& scale_bias, const char* op) {
  TORCH_CHECK(masks.dim() == 2 && masks.scalar_type() == at::kLong, op,
              ": masks must be (N, W) int64, got ", masks.sizes(), " ", masks.scalar_type());
  TORCH_CHECK(dim >= 1, op, ": dim must be >= 1, got ", dim);
  const int64_t words = (dim - 1) / 64 + 1;
  TORCH_CHECK(masks.size(1) == words, op, ": dim ", dim, " needs ", words,
              " mask words per row, masks have ", masks.size(1));
  TORCH_CHECK(group_size >= 1, op, ": group_size must be >= 1, got ", group_size);
  const int64_t groups = masks.size(0) == 0 ? 0 : (masks.size(0) - 1) / group_size + 1;
  TORCH_CHECK(group_offsets.dim() == 1 && group_offsets.scalar_type() == at::kLong &&
                  group_offsets.size(0) == groups + 1,
              op, ": group_offsets must be (ceil(N/G)+1,) = (", groups + 1, ",) int64, got ",
              group_offsets.sizes(), " ", group_offsets.scalar_type());
  TORCH_CHECK(values.dim() == 1, op, ": values must be 1-D, got ", values.sizes());
  TORCH_CHECK(masks.is_contiguous() && group_offsets.is_contiguous() && values.is_contiguous(),
              op, ": table tensors must be contiguous");
  const at::Half* sb = check_scale_bias(values, scale_bias, masks.size(0), op);
  const int64_t* offsets = group_offsets.data_ptr<int64_t>();
  // O(1) ends of the offsets; the rows in between are checked as they are looked up
  // (row_fits), the whole table on load (mixemb.ragged.RaggedTable.validate).
  TORCH_CHECK_VALUE(offsets[0] == 0 && offsets[groups] == values.numel(), op,
                    ": inconsistent ragged table: group_offsets run from ", offsets[0], " to ",
                    offsets[groups], ", values hold ", values.numel());
  const int shift = (group_size & (group_size - 1)) == 0 ? __builtin_ctzll(group_size) : -1;
  const uint64_t high = dim % 64 == 0 ? 0 : ~((uint64_t{1} << (dim % 64)) - 1);
  return Table{masks.data_ptr<int64_t>(), offsets, masks.size(0), masks.size(1), group_size,
               shift, values.numel(), high, sb};
}

// out= buffers of the gather: contiguous (*ids.shape, dim) in the rows' dtype (the values',
// float32 for an int8 table) on the values' device.
void check_gather_out(const at::Tensor& out, const at::Tensor& ids, const at::Tensor& values,
                      int64_t dim, const char* op) {
  std::vector<int64_t> shape(ids.sizes().begin(), ids.sizes().end());
  shape.push_back(dim);
  TORCH_CHECK(out.sizes() == at::IntArrayRef(shape), op, ": out must have shape ",
              at::IntArrayRef(shape), " (ids' shape + [dim]), got ", out.sizes());
  TORCH_CHECK(out.scalar_type() == output_type(values), op, ": out must be ",
              output_type(values), " like the table's rows, got ", out.scalar_type());
  TORCH_CHECK(out.device() == values.device(), op, ": out is on ", out.device(),
              ", the table on ", values.device());
  TORCH_CHECK(out.is_contiguous(), op, ": out must be contiguous");
}

constexpr int64_t kTile = 64;   // lookups per pass pair (row starts, then rows)
// How many lookups ahead the prefetches run: the metadata (masks, group offset) far ahead,
// since a row's values can only be located once it has arrived; the values nearer
// (distances chosen with bench/bench_serve.py; bench/README.md has the figures).
constexpr int64_t kAheadMeta = 40;
constexpr int64_t kAheadValues = 16;

// fp32 gathers whose output is at least kStreamMinBytes stream it (non-temporal stores on
// AVX-512): it cannot stay in a core's 1-2 MB L2 for the consumer anyway, and a reused
// buffer is then written without first being read. Not from kStreamMaxBytes up: glibc
// serves such blocks as fresh mmaps, whose pages the kernel has just zeroed through the
// cache on first touch, so streaming past the cache would write every line twice.
// A caller's buffer (ragged_gather_out) streams at every size from kStreamMinBytes: its
// pages are already there.
constexpr int64_t kStreamMinBytes = int64_t{1} << 21;
constexpr int64_t kStreamMaxBytes = int64_t{32} << 20;

// Such fresh-mmap outputs (kStreamMaxBytes and up) are first asked for transparent huge
// pages: first-touching 4 KiB pages, not the copy, dominates a big gather (bench/README.md,
// "Large outputs and huge pages"). A hint only: where THP is off it does nothing. torch's
// own allocator does the same for every tensor with THP_MEM_ALLOC_ENABLE=1;
// MIXEMB_NO_HUGE_PAGES=1 turns ours off (a process-wide memory policy like that one, read
// once when the library loads, not by the ops).
const bool kNoHugePages = std::getenv("MIXEMB_NO_HUGE_PAGES") != nullptr &&
                          std::string(std::getenv("MIXEMB_NO_HUGE_PAGES")) != "0";

inline void advise_huge_pages(void* data, int64_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (kNoHugePages || bytes < kStreamMaxBytes) return;
  constexpr uintptr_t kHuge = uintptr_t{1} << 21;
  const uintptr_t first = reinterpret_cast<uintptr_t>(data);
  const uintptr_t lo = (first + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t hi = (first + static_cast<uintptr_t>(bytes)) & ~(kHuge - 1);
  if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);  // best effort
#else
  (void)data;
  (void)bytes;
#endif
}

// The prefetch helpers are always inlined: GCC 12 finds a function whose only effect is
// __builtin_prefetch "pure" and, as its result is unused, deletes every call to it — an
// out-of-line helper prefetched nothing (no prefetch instruction was left in this file).
#define MIXEMB_PREFETCH_HELPER __attribute__((always_inline)) inline

// Prefetches what row_start(t, id) reads: the group's base offset and the masks of the
// rows of the group up to `id` (at most two cache lines at the default G = 16).
MIXEMB_PREFETCH_HELPER void prefetch_row_meta(const Table& t, int64_t id) {
  if (id < 0 || id >= t.rows) return;
  const int64_t group = t.shift >= 0 ? id >> t.shift : id / t.group_size;
  const int64_t first = t.shift >= 0 ? group << t.shift : group * t.group_size;
  __builtin_prefetch(t.group_offsets + group);
  __builtin_prefetch(t.masks + first * t.words);
  __builtin_prefetch(t.masks + id * t.words);
}

// Prefetches the lines of the first `count` kept values from `start` (at most 256 bytes:
// the first line, the last and the two between, the ones a short row lacks being repeats
// of its last): no branch on the count, which varies from row to row, and no line of a
// row that straddles a line boundary left out.
template <typename scalar_t>
MIXEMB_PREFETCH_HELPER void prefetch_values(const scalar_t* vals, int64_t start,
                                            int64_t count) {
  const char* p = reinterpret_cast<const char*>(vals + start);
  const int64_t bytes =
      std::clamp<int64_t>(count * static_cast<int64_t>(sizeof(scalar_t)), 1, 256);
  const char* e = p + bytes - 1;
  __builtin_prefetch(p);
  __builtin_prefetch(std::min(p + 64, e));
  __builtin_prefetch(std::min(p + 128, e));
  __builtin_prefetch(e);
}

inline int64_t row_count(const Table& t, int64_t id) {
  int64_t c = 0;
  for (int64_t w = 0; w < t.words; ++w) c += popcount64(t.masks[id * t.words + w]);
  return c;
}

// The id at position i; with `check`, an out-of-range id raises naming it, without, it
// comes back as -1 and the caller reads nothing for it (a zero row / zero score).
template <typename index_t>
inline int64_t checked_id(const index_t* ids, int64_t i, int64_t rows, bool check,
                          const char* op) {
  const int64_t id = static_cast<int64_t>(ids[i]);
  const bool ok = id >= 0 && id < rows;
  if (check) {
    TORCH_CHECK(ok, op, ": id ", id, " at position ", i, " is out of range [0, ", rows, ")");
  }
  return ok ? id : -1;
}

// With check_bounds, the callers check every id before any is looked up, in one pass far
// cheaper than the lookups (any_bad_id); only when it finds one are the ids walked again,
// to name the first. The lookup loops then only need the unchecked case: an out-of-range
// id reads nothing (a zero row, adds nothing).
template <typename index_t>
void check_ids(const index_t* ids, int64_t n, int64_t rows, const char* op) {
  if (!any_bad_id(ids, n, rows)) return;
  for (int64_t i = 0; i < n; ++i) checked_id(ids, i, rows, true, op);
}

// Row starts (-1 for a bad id, which the caller reads nothing for) and kept counts of the
// lookups [i0, i0 + count), count <= kTile, with the metadata prefetched kAheadMeta
// lookups ahead (the loads of one lookup depend on each other — id -> masks -> values —
// so keeping several lookups' misses in flight is what makes a gather fast); it ends by
// prefetching the values of the first kAheadValues lookups of the tile. A row that does
// not fit the values raises (naming `op`) before any value of the tile is read.
template <typename index_t, typename scalar_t>
inline void tile_starts(const Table& t, const index_t* ids, int64_t i0, int64_t count,
                        int64_t stop, const scalar_t* vals, int64_t* starts, int64_t* counts,
                        const char* op) {
  bool misfit = false;
  for (int64_t j = 0; j < count; ++j) {
    if (i0 + j + kAheadMeta < stop) {
      prefetch_row_meta(t, static_cast<int64_t>(ids[i0 + j + kAheadMeta]));
    }
    const int64_t id = static_cast<int64_t>(ids[i0 + j]);
    if (id < 0 || id >= t.rows) {
      starts[j] = -1;
      counts[j] = 0;
      continue;
    }
    starts[j] = row_start(t, id);
    counts[j] = row_count(t, id);
    misfit |= !row_fits(t, id, starts[j], counts[j]);
  }
  if (misfit) {  // the tile's first misfit row raises; the loop above stays branch-free
    for (int64_t j = 0; j < count; ++j) {
      const int64_t id = static_cast<int64_t>(ids[i0 + j]);
      if (id >= 0 && id < t.rows && !row_fits(t, id, starts[j], counts[j])) {
        raise_bad_row(t, id, starts[j], counts[j], op);
      }
    }
  }
  for (int64_t j = 0; j < std::min(count, kAheadValues); ++j) {
    if (starts[j] >= 0) prefetch_values(vals, starts[j], counts[j]);
  }
}

#ifdef MIXEMB_X86_64
// The per-thread rows of the bag and the dot: a dense copy of the hottest rows, then one
// zero row (the dot splits the rows in halves for two tables). Ids are
// frequency-sorted, so the first kHotRows ids take most lookups (66 % of bench_serve's
// Zipf lookups below 1024, 76 % below 4096), and a row expanded once per call is then read
// as four aligned vectors instead of being located and expanded. One per thread (kept
// across calls; every call refills the rows it reads, so a row is never read from another
// call or table), with the list of a window's other lookups.
constexpr int64_t kHotRows = 4096;
struct BagRows {
  float* rows = nullptr;  // (kHotRows + 1, 64), 64-byte aligned; row kHotRows stays zero
  std::vector<int64_t> cold;  // a window's other lookups: (position, bag) pairs
  BagRows() {
    rows = static_cast<float*>(std::aligned_alloc(64, (kHotRows + 1) * 64 * sizeof(float)));
    if (rows != nullptr) std::memset(rows + kHotRows * 64, 0, 64 * sizeof(float));
  }
  ~BagRows() { std::free(rows); }
  BagRows(const BagRows&) = delete;
  BagRows& operator=(const BagRows&) = delete;
};

// This thread's BagRows, or null if its buffer could not be allocated. Not inlined: the
// caller then holds a plain pointer, where an inlined thread_local address was recomputed
// (a __tls_get_addr call in a shared library) at each use in the loops.
__attribute__((noinline)) BagRows* bag_rows() {
  thread_local BagRows rows;
  return rows.rows == nullptr ? nullptr : &rows;
}

// The pipelined fp32 kernels of one-word rows (K <= 64) on AVX-512: the gather, and the
// bag for its lookups that are not hot, walk them in one loop in which lookup
// i + kAheadMetaPipe has its
// metadata (group offset, masks) prefetched, lookup i + kAheadLocate is located (row start
// from that metadata, checked, its values prefetched) and lookup i is read. Every load so
// gets a fixed number of whole lookups to arrive (a tile's burst of row starts gave the
// metadata of its later lookups only a few instructions), the located rows wait in a
// small ring, and nothing is called per lookup.
constexpr int64_t kAheadMetaPipe = 16;
constexpr int64_t kAheadLocate = 6;
constexpr int64_t kRing = 8;  // located lookups kept (a power of two > kAheadLocate)
static_assert(kRing > kAheadLocate && (kRing & (kRing - 1)) == 0);

// What the pipelined kernels need beyond AVX-512F (every CPU with VPOPCNTDQ has them).
const bool kHasPipe = kHasVpopcnt && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("bmi2");

// What the locate stage leaves for the read: `start` = the row's first value and `bits`
// its mask word, or start kRowSkip for an out-of-range id when ids are not checked (it
// reads nothing).
constexpr int64_t kRowSkip = -1;
struct Located {
  int64_t start;
  uint64_t bits;
};

// The 16 dims [q, q + 16) of a one-word row: its next values from `src` expanded to their
// dims, zeros elsewhere; src moves past them. One expand-load, which reads just the kept
// values: a bag's located pass over rows in L1 ran 15 % faster than with a masked load of
// them (its mask a popcount and a bzhi) and then an expand.
__attribute__((target("avx512f,popcnt"), always_inline)) inline __m512 quarter(
    uint64_t m, int q, const float*& src) {
  const uint32_t bits = static_cast<uint32_t>((m >> q) & 0xFFFF);
  const __m512 v = _mm512_maskz_expandloadu_ps(static_cast<__mmask16>(bits), src);
  src += __builtin_popcount(bits);
  return v;
}

// row_start of a one-word row in a group of at most 16 rows (0 <= t.shift <= 4), with
// the group's prefix inlined (row_start calls it).
__attribute__((target("avx512f,avx512bw,avx512vpopcntdq,popcnt,bmi2"),
               always_inline)) inline int64_t
row_start16(const Table& t, int64_t row) {
  const int64_t first = row & ~((int64_t{1} << t.shift) - 1);
  const int64_t prefix = group_prefix16_avx512(t.masks + first, row - first);
  return static_cast<int64_t>(static_cast<uint64_t>(t.group_offsets[row >> t.shift]) +
                              static_cast<uint64_t>(prefix));
}

// The metadata stage of a lookup of row `id` (any value: out of range prefetches nothing).
MIXEMB_PREFETCH_HELPER void prefetch_lookup_meta(const Table& t, uint64_t id) {
  prefetch_row_meta(t, static_cast<int64_t>(id));
}

// row_start of the in-range one-word row `row` (mask word m); a row that does not fit the
// values raises (naming `op`) before any of its values is read.
__attribute__((target("avx512f,avx512bw,avx512vpopcntdq,popcnt,bmi2"),
               always_inline)) inline int64_t
fitted_start(const Table& t, int64_t row, uint64_t m, const char* op) {
  const int64_t start = t.shift >= 0 && t.shift <= 4 ? row_start16(t, row) : row_start(t, row);
  if (__builtin_expect(!row_fits(t, row, start, popcount64(m)), 0)) {
    raise_bad_row(t, row, start, popcount64(m), op);
  }
  return start;
}

// The locate stage of a lookup of row `id`: r filled as Located says, the row's values
// prefetched.
__attribute__((target("avx512f,avx512bw,avx512vpopcntdq,popcnt,bmi2"),
               always_inline)) inline void locate_row(
    const Table& t, uint64_t id, const float* vals, Located& r, const char* op) {
  if (id >= static_cast<uint64_t>(t.rows)) {
    r.start = kRowSkip;
    return;
  }
  const int64_t row = static_cast<int64_t>(id);
  const uint64_t m = static_cast<uint64_t>(t.masks[row]);
  const int64_t start = fitted_start(t, row, m, op);
  prefetch_values(vals, start, popcount64(m));
  r.start = start;
  r.bits = m;
}

// A one-word row (mask word m, values from src) as 64 dense floats at dst (64-byte aligned).
__attribute__((target("avx512f,popcnt"), always_inline)) inline void expand_row64(
    uint64_t m, const float* src, float* dst) {
  for (int q = 0; q < 64; q += 16) _mm512_store_ps(dst + q, quarter(m, q, src));
}

// dst[0:dim] += the sums a0..a3 (16 dims each; named, not an array: GCC keeps an indexed
// array, and then the sums, in memory).
__attribute__((target("avx512f"), always_inline)) inline void add_to_row(
    float* dst, int64_t dim, __m512 a0, __m512 a1, __m512 a2, __m512 a3) {
  add16(dst, 0, dim, a0);
  if (dim > 16) add16(dst, 16, dim, a1);
  if (dim > 32) add16(dst, 32, dim, a2);
  if (dim > 48) add16(dst, 48, dim, a3);
}

// dst[0:dim] = a0..a3.
__attribute__((target("avx512f"), always_inline)) inline void store_row(
    float* dst, int64_t dim, __m512 a0, __m512 a1, __m512 a2, __m512 a3) {
  store16(dst, 0, dim, a0, false);
  if (dim > 16) store16(dst, 16, dim, a1, false);
  if (dim > 32) store16(dst, 32, dim, a2, false);
  if (dim > 48) store16(dst, 48, dim, a3, false);
}

// Expands rows [0, h) into `rows` (64 floats each) in order, locating each as row_start
// does (its group's offset plus the popcounts of the group's rows before it), so that the
// reads are sequential and the rows need no prefetch. Returns h, or the first row that
// does not fit the values: the rows from there on take the located path, which raises when
// one of them is looked up (a corrupt row raises only if a lookup reads it).
__attribute__((target("avx512f,avx512vpopcntdq,popcnt,bmi2"))) int64_t fill_hot_rows(
    const Table& t, const float* vals, int64_t h, float* rows) {
  uint64_t start = 0;
  int64_t left = 0, group = 0;
  for (int64_t row = 0; row < h; ++row, --left) {
    if (left == 0) {
      start = static_cast<uint64_t>(t.group_offsets[group++]);
      left = t.group_size;
    }
    const uint64_t m = static_cast<uint64_t>(t.masks[row]);
    const int64_t count = popcount64(m);
    if (!row_fits(t, row, static_cast<int64_t>(start), count)) return row;
    expand_row64(m, vals + start, rows + row * 64);
    start += count;
  }
  return h;
}

// row_start of the in-range one-word row `row` of a group of 16 (t.shift == 4) from the
// one line of masks that holds its own: a row in the group's first half adds the
// popcounts of the rows before it to its group's offset, one in the second half subtracts
// those of itself and the rows after it (to the group's end, or the table's) from the next
// group's offset (group_offsets has one past the last group). The other half's line is
// never read: the bag's listed lookups, mostly distinct rows that miss the caches, so
// wait on one line of masks instead of 1.5 on average. The same start as row_start on a
// consistent table; on a corrupt one row_fits still bounds it.
__attribute__((target("avx512f,avx512bw,avx512vpopcntdq,popcnt,bmi2"),
               always_inline)) inline uint64_t
row_start_half(const Table& t, int64_t row) {
  const int64_t first = row & ~int64_t{15};
  const int64_t rel = row - first;
  const bool back = rel >= 8;
  const int64_t past_half = std::clamp<int64_t>(t.rows - first - 8, 0, 8);
  const uint32_t lanes =
      back ? (0xFFu << (rel - 8)) & ((1u << past_half) - 1) : (1u << rel) - 1;
  const __m512i counts = _mm512_popcnt_epi64(_mm512_maskz_loadu_epi64(
      static_cast<__mmask8>(lanes), t.masks + first + (back ? 8 : 0)));
  const __m128i packed = _mm512_maskz_cvtepi64_epi8(0xFF, counts);
  const uint64_t sum =
      static_cast<uint64_t>(_mm_cvtsi128_si64(_mm_sad_epu8(packed, _mm_setzero_si128())));
  const uint64_t neg = back ? ~uint64_t{0} : 0;  // -sum when back, without a branch
  return static_cast<uint64_t>(t.group_offsets[(row >> 4) + back]) + ((sum ^ neg) - neg);
}

// The metadata stage of a listed lookup of row `id` (out of range prefetches nothing):
// with kHalf (t.shift == 4) the two lines row_start_half reads, else prefetch_lookup_meta's.
template <bool kHalf>
MIXEMB_PREFETCH_HELPER void prefetch_listed_meta(const Table& t, uint64_t id) {
  if constexpr (kHalf) {
    if (id >= static_cast<uint64_t>(t.rows)) return;
    __builtin_prefetch(t.group_offsets + (static_cast<int64_t>(id) >> 4) + ((id & 15) >= 8));
    __builtin_prefetch(t.masks + id);
  } else {
    prefetch_lookup_meta(t, id);
  }
}

// The locate stage of a listed lookup of row `id`: locate_row with row_start_half where
// kHalf, and only the first and last line of the row's values prefetched (listed rows are
// past the copied hot rows and keep few dims: one or two lines; four prefetches each,
// most of them repeats, timed 9 % slower in all).
template <bool kHalf>
__attribute__((target("avx512f,avx512bw,avx512vpopcntdq,popcnt,bmi2"),
               always_inline)) inline void locate_listed(
    const Table& t, uint64_t id, const float* vals, Located& r) {
  if (id >= static_cast<uint64_t>(t.rows)) {
    r.start = kRowSkip;
    return;
  }
  const int64_t row = static_cast<int64_t>(id);
  const uint64_t m = static_cast<uint64_t>(t.masks[row]);
  const int64_t count = popcount64(m);
  int64_t start;
  if constexpr (kHalf) {
    start = static_cast<int64_t>(row_start_half(t, row));
    if (__builtin_expect(!row_fits(t, row, start, count), 0)) {
      raise_bad_row(t, row, start, count, "ragged_bag");
    }
  } else {
    start = fitted_start(t, row, m, "ragged_bag");
  }
  const char* p = reinterpret_cast<const char*>(vals + start);
  __builtin_prefetch(p);
  __builtin_prefetch(p + std::max<int64_t>(count * 4 - 1, 0));
  r.start = start;
  r.bits = m;
}

// The listed lookups of a bag window (cold: (position, bag) pairs, in order of position)
// in the gather's pipeline: lookup l + kAheadMetaPipe has its metadata prefetched, lookup
// l + kAheadLocate is located (row start and mask; its values prefetched) and lookup l is
// expanded and added to the sums of its bag, which are added to the bag's output row when
// the next lookup is of another bag (adding each row to the output row instead made every
// lookup wait for the store of the one before it). Not inlined, so that a profile tells
// this pass from the other (one call per window).
template <typename index_t, bool kWeighted, bool kHalf>
__attribute__((target("avx512f,avx512bw,avx512vpopcntdq,popcnt,bmi2"), noinline)) void sum_listed(
    const Table& t, const index_t* ids, const int64_t* cold, int64_t nc, const float* vals,
    const float* w, int64_t dim, float* out) {
  if (nc == 0) return;
  Located ring[kRing];
  const auto id_of = [&](int64_t l) __attribute__((always_inline)) {
    return static_cast<uint64_t>(static_cast<int64_t>(ids[cold[2 * l]]));
  };
  for (int64_t l = 0; l < std::min(nc, kAheadMetaPipe); ++l) {
    prefetch_listed_meta<kHalf>(t, id_of(l));
  }
  for (int64_t l = 0; l < std::min(nc, kAheadLocate); ++l) {
    locate_listed<kHalf>(t, id_of(l), vals, ring[l & (kRing - 1)]);
  }
  int64_t bag = cold[1];
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  for (int64_t l = 0; l < nc; ++l) {
    if (l + kAheadMetaPipe < nc) prefetch_listed_meta<kHalf>(t, id_of(l + kAheadMetaPipe));
    if (l + kAheadLocate < nc) {
      locate_listed<kHalf>(t, id_of(l + kAheadLocate), vals,
                           ring[(l + kAheadLocate) & (kRing - 1)]);
    }
    const Located r = ring[l & (kRing - 1)];
    const float* src = vals + r.start;
    __m512 x0 = quarter(r.bits, 0, src);
    __m512 x1 = quarter(r.bits, 16, src);
    __m512 x2 = quarter(r.bits, 32, src);
    __m512 x3 = quarter(r.bits, 48, src);
    if (cold[2 * l + 1] != bag) {
      add_to_row(out + bag * dim, dim, a0, a1, a2, a3);
      a0 = a1 = a2 = a3 = _mm512_setzero_ps();
      bag = cold[2 * l + 1];
    }
    if constexpr (kWeighted) {
      const __m512 s = _mm512_set1_ps(w[cold[2 * l]]);
      a0 = _mm512_fmadd_ps(x0, s, a0);
      a1 = _mm512_fmadd_ps(x1, s, a1);
      a2 = _mm512_fmadd_ps(x2, s, a2);
      a3 = _mm512_fmadd_ps(x3, s, a3);
    } else {
      a0 = _mm512_add_ps(a0, x0);
      a1 = _mm512_add_ps(a1, x1);
      a2 = _mm512_add_ps(a2, x2);
      a3 = _mm512_add_ps(a3, x3);
    }
  }
  add_to_row(out + bag * dim, dim, a0, a1, a2, a3);
}

// The fp32 bags [begin, end), a window of whole bags of at most kBagWindow lookups at a
// time (more only for one bag that alone has more), in two passes:
// * every lookup: a hot one (id below h, the rows copied into this thread's BagRows at
//   the start) adds its row, four aligned loads; any other adds the zero row (no branch
//   on the kind, which is mispredicted about every other lookup) and is listed; each bag's
//   sum is stored in its output row;
// * the listed lookups, in the gather's pipeline (metadata kAheadMetaPipe, location
//   kAheadLocate lookups ahead), each row expanded and added to its bag's output row.
// h is at most a sixteenth of the chunk's lookups, so a small call copies few rows. A bag
// so adds its hot rows, then the others (the sum is the same up to rounding). Ids must be
// in range unless the caller did not check them (then an out-of-range one adds nothing).
// offsets: n_offsets bag starts (int64, checked); a bag ends where the next starts, the
// last at m_ids. w: per-lookup weights (float32), read only when kWeighted. False (nothing
// written) without a BagRows buffer.
constexpr int64_t kBagWindow = 4096;

template <typename index_t, bool kWeighted>
__attribute__((target("avx512f,avx512bw,avx512vpopcntdq,popcnt,bmi2"))) bool bags_avx512(
    const Table& t, const index_t* ids, const int64_t* offsets, int64_t n_offsets,
    int64_t m_ids, int64_t begin, int64_t end, const float* vals, const float* w, int64_t dim,
    bool mean, float* out) {
  BagRows* buf = bag_rows();
  if (buf == nullptr) return false;
  if (begin >= end) return true;
  const auto bag_end = [&](int64_t b) { return b + 1 < n_offsets ? offsets[b + 1] : m_ids; };
  const int64_t h = fill_hot_rows(
      t, vals, std::min({kHotRows, t.rows, (bag_end(end - 1) - offsets[begin]) / 16}),
      buf->rows);
  const float* hot_rows = buf->rows;
  const float* zero_row = buf->rows + kHotRows * 64;
  const uint64_t rows = static_cast<uint64_t>(t.rows);
  for (int64_t b0 = begin; b0 < end;) {
    int64_t b1 = b0 + 1;
    while (b1 < end && bag_end(b1) - offsets[b0] <= kBagWindow) ++b1;
    const size_t n = static_cast<size_t>(bag_end(b1 - 1) - offsets[b0]);
    if (buf->cold.size() < 2 * n) buf->cold.resize(2 * n);
    int64_t* cold = buf->cold.data();
    int64_t nc = 0;

    for (int64_t b = b0; b < b1; ++b) {  // every lookup; the others listed
      __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
      for (int64_t i = offsets[b], e = bag_end(b); i < e; ++i) {
        const uint64_t id = static_cast<uint64_t>(static_cast<int64_t>(ids[i]));
        const bool hot = id < static_cast<uint64_t>(h);
        const float* row = hot ? hot_rows + id * 64 : zero_row;
        if constexpr (kWeighted) {
          const __m512 s = _mm512_set1_ps(hot ? w[i] : 0.f);  // 0 * inf would be nan
          a0 = _mm512_fmadd_ps(_mm512_load_ps(row), s, a0);
          a1 = _mm512_fmadd_ps(_mm512_load_ps(row + 16), s, a1);
          a2 = _mm512_fmadd_ps(_mm512_load_ps(row + 32), s, a2);
          a3 = _mm512_fmadd_ps(_mm512_load_ps(row + 48), s, a3);
        } else {
          a0 = _mm512_add_ps(a0, _mm512_load_ps(row));
          a1 = _mm512_add_ps(a1, _mm512_load_ps(row + 16));
          a2 = _mm512_add_ps(a2, _mm512_load_ps(row + 32));
          a3 = _mm512_add_ps(a3, _mm512_load_ps(row + 48));
        }
        cold[2 * nc] = i;
        cold[2 * nc + 1] = b;
        nc += !hot && id < rows;  // an unchecked out-of-range id is in neither pass
      }
      store_row(out + b * dim, dim, a0, a1, a2, a3);
    }

    if (t.shift == 4) {
      sum_listed<index_t, kWeighted, true>(t, ids, cold, nc, vals, w, dim, out);
    } else {
      sum_listed<index_t, kWeighted, false>(t, ids, cold, nc, vals, w, dim, out);
    }

    if (mean) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t count = bag_end(b) - offsets[b];
        if (count <= 1) continue;
        const __m512 d = _mm512_set1_ps(static_cast<float>(count));
        for (int64_t k = 0; k < dim; k += 16) {
          const __mmask16 lanes = k + 16 <= dim ? static_cast<__mmask16>(0xFFFF)
                                                : static_cast<__mmask16>((1u << (dim - k)) - 1);
          float* p = out + b * dim + k;
          _mm512_mask_storeu_ps(p, lanes, _mm512_div_ps(_mm512_maskz_loadu_ps(lanes, p), d));
        }
      }
    }
    b0 = b1;
  }
  return true;
}

// The fp32 rows of lookups [begin, end) into out ((n, dim), row i at out + i * dim) in the
// pipeline above; an out-of-range id (not checked by the caller) gives a zero row. With
// `stream` (out 64-byte aligned, dim a multiple of 16) the stores are non-temporal and
// fenced at the end.
template <typename index_t>
__attribute__((target("avx512f,avx512bw,avx512vpopcntdq,popcnt,bmi2"))) void gather_avx512(
    const Table& t, const index_t* ids, int64_t begin, int64_t end, const float* vals,
    int64_t dim, bool stream, float* out) {
  const auto id_at = [&](int64_t s) { return static_cast<uint64_t>(static_cast<int64_t>(ids[s])); };
  Located ring[kRing];
  for (int64_t s = begin; s < std::min(end, begin + kAheadMetaPipe); ++s) {
    prefetch_lookup_meta(t, id_at(s));
  }
  for (int64_t s = begin; s < std::min(end, begin + kAheadLocate); ++s) {
    locate_row(t, id_at(s), vals, ring[s & (kRing - 1)], "ragged_gather");
  }
  for (int64_t i = begin; i < end; ++i) {
    if (i + kAheadMetaPipe < end) prefetch_lookup_meta(t, id_at(i + kAheadMetaPipe));
    if (i + kAheadLocate < end) {
      locate_row(t, id_at(i + kAheadLocate), vals, ring[(i + kAheadLocate) & (kRing - 1)],
                 "ragged_gather");
    }
    const Located r = ring[i & (kRing - 1)];
    const float* src = vals + (r.start >= 0 ? r.start : 0);
    const uint64_t m = r.start >= 0 ? r.bits : 0;  // a skipped row: no bits, zeros
    float* dst = out + i * dim;
    for (int q = 0; q < dim; q += 16) store16(dst, q, dim, quarter(m, q, src), stream);
  }
  if (stream) store_fence();  // this thread's streamed rows are visible after the op
}

// One side of a dot pair as the read stage takes it: `src` its first value, `bits` its
// mask word, `expand` the mask its values are expanded by (bits for a packed row, every
// dim for a hot row's dense copy); src null for an unchecked out-of-range id.
struct DotSide {
  const float* src;
  uint64_t bits;
  uint64_t expand;
};

// The locate stage of one side of a dot pair, row `id`: a row below h is read from its
// dense copy in `hot` (64 floats a row, filled by fill_hot_rows), any other is located
// as locate_row does (values prefetched).
__attribute__((target("avx512f,avx512bw,avx512vpopcntdq,popcnt,bmi2"),
               always_inline)) inline void locate_side(
    const Table& t, uint64_t id, const float* vals, const float* hot, int64_t h, DotSide& r,
    const char* op) {
  if (id < static_cast<uint64_t>(h)) {
    r.src = hot + id * 64;
    r.bits = static_cast<uint64_t>(t.masks[id]);
    r.expand = ~uint64_t{0};
    return;
  }
  Located l;
  locate_row(t, id, vals, l, op);
  r.src = l.start >= 0 ? vals + l.start : nullptr;
  r.bits = l.bits;
  r.expand = l.bits;
}

// Whether ta and tb are one table (the dot of a table with itself: one copy of its hot
// rows serves both sides).
inline bool same_table(const Table& ta, const Table& tb, const float* va, const float* vb) {
  return ta.masks == tb.masks && ta.group_offsets == tb.group_offsets && ta.rows == tb.rows &&
         ta.group_size == tb.group_size && va == vb;
}

// The fp32 scores of pairs [begin, end) in the gather's pipeline, both sides at once:
// pair i + kAheadMetaPipe has both rows' metadata prefetched, pair i + kAheadLocate both
// rows located (values prefetched), and pair i is scored: each 16-dim step expands both
// rows' kept values and adds their products where both rows keep the dim (a masked
// multiply-add: a dim one row alone keeps adds nothing), then one horizontal sum. As in
// the bag, the hottest rows (at most one per 16 looked-up rows; a table dotted with
// itself shares them, two tables get half the buffer each) are first expanded into this
// thread's BagRows, and a side that looks one of them up reads its dense copy instead of
// locating it. A pair with an unchecked out-of-range id scores 0.
template <typename index_t>
__attribute__((target("avx512f,avx512bw,avx512vpopcntdq,popcnt,bmi2"))) void dot_avx512(
    const Table& ta, const Table& tb, const index_t* ids_a, const index_t* ids_b,
    int64_t begin, int64_t end, const float* va, const float* vb, int64_t dim, float* out) {
  const auto a_at = [&](int64_t s) {
    return static_cast<uint64_t>(static_cast<int64_t>(ids_a[s]));
  };
  const auto b_at = [&](int64_t s) {
    return static_cast<uint64_t>(static_cast<int64_t>(ids_b[s]));
  };
  BagRows* buf = bag_rows();
  const float* hot_a = nullptr;
  const float* hot_b = nullptr;
  int64_t ha = 0, hb = 0;  // no hot rows without a buffer
  if (buf != nullptr) {
    const int64_t pairs = end - begin;
    if (same_table(ta, tb, va, vb)) {
      hot_a = hot_b = buf->rows;
      ha = hb = fill_hot_rows(ta, va, std::min({kHotRows, ta.rows, pairs / 8}), buf->rows);
    } else {
      float* second_half = buf->rows + kHotRows / 2 * 64;
      hot_a = buf->rows;
      hot_b = second_half;
      ha = fill_hot_rows(ta, va, std::min({kHotRows / 2, ta.rows, pairs / 16}), buf->rows);
      hb = fill_hot_rows(tb, vb, std::min({kHotRows / 2, tb.rows, pairs / 16}), second_half);
    }
  }
  DotSide ring_a[kRing], ring_b[kRing];
  const auto locate = [&](int64_t s) __attribute__((
                           target("avx512f,avx512bw,avx512vpopcntdq,popcnt,bmi2"), always_inline)) {
    locate_side(ta, a_at(s), va, hot_a, ha, ring_a[s & (kRing - 1)], "ragged_dot (table a)");
    locate_side(tb, b_at(s), vb, hot_b, hb, ring_b[s & (kRing - 1)], "ragged_dot (table b)");
  };
  for (int64_t s = begin; s < std::min(end, begin + kAheadMetaPipe); ++s) {
    prefetch_lookup_meta(ta, a_at(s));
    prefetch_lookup_meta(tb, b_at(s));
  }
  for (int64_t s = begin; s < std::min(end, begin + kAheadLocate); ++s) locate(s);
  for (int64_t i = begin; i < end; ++i) {
    if (i + kAheadMetaPipe < end) {
      prefetch_lookup_meta(ta, a_at(i + kAheadMetaPipe));
      prefetch_lookup_meta(tb, b_at(i + kAheadMetaPipe));
    }
    if (i + kAheadLocate < end) locate(i + kAheadLocate);
    const DotSide x = ring_a[i & (kRing - 1)];
    const DotSide y = ring_b[i & (kRing - 1)];
    const bool ok = x.src != nullptr && y.src != nullptr;
    const uint64_t ex = ok ? x.expand : 0, ey = ok ? y.expand : 0;  // a skipped pair: zeros
    const float* sx = ok ? x.src : va;
    const float* sy = ok ? y.src : vb;
    const uint64_t both = ok ? x.bits & y.bits : 0;
    __m512 acc = _mm512_setzero_ps();
    for (int q = 0; q < dim; q += 16) {
      const __m512 px = quarter(ex, q, sx);
      const __m512 py = quarter(ey, q, sy);
      acc = _mm512_mask3_fmadd_ps(px, py, acc, static_cast<__mmask16>(both >> q));
    }
    out[i] = _mm512_reduce_add_ps(acc);
  }
}
#endif


// The register-resident fp32 bags where there are (AVX-512 with VPOPCNTDQ, one mask word
// per row): bags [begin, end) written to out; false where the caller's generic loop must
// run instead. w: the weights in the accumulation type, or null.
template <typename scalar_t, typename index_t, typename acc_t, typename out_t>
inline bool bags_fast(const Table& t, const index_t* ids, const int64_t* offsets,
                      int64_t n_offsets, int64_t m_ids, int64_t begin, int64_t end,
                      const scalar_t* vals, const acc_t* w, int64_t dim, bool mean, out_t* out) {
#ifdef MIXEMB_X86_64
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (kHasPipe && t.words == 1) {
      return w != nullptr ? bags_avx512<index_t, true>(t, ids, offsets, n_offsets, m_ids, begin,
                                                       end, vals, w, dim, mean, out)
                          : bags_avx512<index_t, false>(t, ids, offsets, n_offsets, m_ids,
                                                        begin, end, vals, w, dim, mean, out);
    }
  }
#endif
  return false;
}

// The pipelined fp32 gather where there is one (gather_avx512; one mask word per row):
// lookups [begin, end) written to out; false where the caller's tiled loop must run.
template <typename scalar_t, typename index_t, typename out_t>
inline bool gather_fast(const Table& t, const index_t* ids, int64_t begin, int64_t end,
                        const scalar_t* vals, int64_t dim, bool stream, out_t* out) {
#ifdef MIXEMB_X86_64
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (kHasPipe && t.words == 1) {
      gather_avx512(t, ids, begin, end, vals, dim, stream, out);
      return true;
    }
  }
#endif
  return false;
}

// The pipelined fp32 dot where there is one (dot_avx512; one mask word per row on both
// sides): pairs [begin, end) scored into out; false where the caller's loop must run.
template <typename scalar_t, typename index_t, typename acc_t>
inline bool dot_fast(const Table& ta, const Table& tb, const index_t* ids_a,
                     const index_t* ids_b, int64_t begin, int64_t end, const scalar_t* va,
                     const scalar_t* vb, int64_t dim, acc_t* out) {
#ifdef MIXEMB_X86_64
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (kHasPipe && ta.words == 1 && tb.words == 1) {
      dot_avx512(ta, tb, ids_a, ids_b, begin, end, va, vb, dim, out);
      return true;
    }
  }
#endif
  return false;
}

// Writes the dense rows of ids into out, a contiguous (ids.numel(), dim) buffer of the
// rows' dtype (checked by the callers).
// fresh: out was just allocated here (so a big one is a fresh mmap, see kStreamMaxBytes).
void gather_into(const Table& t, const at::Tensor& values, const at::Tensor& ids_c,
                 int64_t dim, bool check_bounds, bool fresh, const at::Tensor& out) {
  const int64_t n = ids_c.numel();
  AT_DISPATCH_FLOATING_TYPES_AND3(at::kHalf, at::kBFloat16, at::kByte, values.scalar_type(),
                                  "ragged_gather_cpu", [&] {
    using out_t = read_t<scalar_t>;
    const scalar_t* vals = values.data_ptr<scalar_t>();
    const int64_t nnz = values.numel();
    out_t* dst_all = out.data_ptr<out_t>();
    const int64_t out_bytes = n * dim * static_cast<int64_t>(sizeof(out_t));
    const bool stream = kHasAvx512 && std::is_same_v<scalar_t, float> && dim % 16 == 0 &&
                        reinterpret_cast<uintptr_t>(dst_all) % 64 == 0 &&
                        out_bytes >= kStreamMinBytes && (!fresh || out_bytes < kStreamMaxBytes);
    AT_DISPATCH_INDEX_TYPES(ids_c.scalar_type(), "ragged_gather_cpu_ids", [&] {
      const index_t* idp = ids_c.data_ptr<index_t>();
      if (check_bounds) check_ids(idp, n, t.rows, "ragged_gather");
      at::parallel_for(0, n, 512, [&](int64_t begin, int64_t end) {
        if (gather_fast(t, idp, begin, end, vals, dim, stream, dst_all)) return;
        int64_t starts[kTile];
        int64_t counts[kTile];
        for (int64_t i0 = begin; i0 < end; i0 += kTile) {
          const int64_t count = std::min(kTile, end - i0);
          tile_starts(t, idp, i0, count, end, vals, starts, counts, "ragged_gather");
          for (int64_t j = 0; j < count; ++j) {
            if (j + kAheadValues < count && starts[j + kAheadValues] >= 0) {
              prefetch_values(vals, starts[j + kAheadValues], counts[j + kAheadValues]);
            }
            const int64_t i = i0 + j;
            const int64_t id = static_cast<int64_t>(idp[i]);
            out_t* dst = dst_all + i * dim;
            if (starts[j] < 0) {
              std::memset(dst, 0, dim * sizeof(out_t));
              continue;
            }
            const scalar_t* src = vals + starts[j];
            const int64_t* mask_row = t.masks + id * t.words;
            const Dequant<scalar_t> dq(t.scale_bias, id);
            if (expand_row_fast(mask_row, dim, src, vals + nnz, dst, stream) ||
                expand_row_int8(mask_row, dim, src, dq, dst)) {
              continue;
            }
            // Zero the row while it is in cache (all-zero bits are 0.0 in every float
            // type), then scatter the few kept values: d iterations, not K.
            std::memset(dst, 0, dim * sizeof(out_t));
            for (int64_t w = 0; w < t.words; ++w) {
              scatter_word(static_cast<uint64_t>(mask_row[w]), src, dst + w * 64, dq);
            }
          }
        }
        if (stream) store_fence();  // this thread's streamed rows are visible after the op
      });
    });
  });
}

void check_ids_dtype(const at::Tensor& ids, const char* op) {
  TORCH_CHECK(ids.scalar_type() == at::kLong || ids.scalar_type() == at::kInt, op,
              ": ids must be int32 or int64, got ", ids.scalar_type());
}

// one_warp and lookups_at_once choose between CUDA kernels: checked here, otherwise unused.
at::Tensor ragged_gather_cpu(const at::Tensor& masks, const at::Tensor& values,
                             const at::Tensor& group_offsets, int64_t group_size, int64_t dim,
                             const at::Tensor& ids, bool check_bounds, bool /*one_warp*/,
                             std::optional<int64_t> lookups_at_once,
                             const std::optional<at::Tensor>& scale_bias) {
  const Table t =
      check_table(masks, values, group_offsets, group_size, dim, scale_bias, "ragged_gather");
  check_ids_dtype(ids, "ragged_gather");
  check_lookups_at_once(lookups_at_once, 1, "ragged_gather");
  std::vector<int64_t> shape(ids.sizes().begin(), ids.sizes().end());
  shape.push_back(dim);
  at::Tensor out = at::empty(shape, values.options().dtype(output_type(values)));
  advise_huge_pages(out.data_ptr(), static_cast<int64_t>(out.nbytes()));
  gather_into(t, values, ids.contiguous(), dim, check_bounds, /*fresh=*/true, out);
  return out;
}

// The caller's buffer: no allocation and no first-touch page faults when it is reused.
// No huge-page advice either: the memory is the caller's.
void ragged_gather_out_cpu(const at::Tensor& masks, const at::Tensor& values,
                           const at::Tensor& group_offsets, int64_t group_size, int64_t dim,
                           const at::Tensor& ids, const at::Tensor& out, bool check_bounds,
                           bool /*one_warp*/, std::optional<int64_t> lookups_at_once,
                           const std::optional<at::Tensor>& scale_bias) {
  const Table t = check_table(masks, values, group_offsets, group_size, dim, scale_bias,
                              "ragged_gather_out");
  check_ids_dtype(ids, "ragged_gather_out");
  check_lookups_at_once(lookups_at_once, 1, "ragged_gather_out");
  check_gather_out(out, ids, values, dim, "ragged_gather_out");
  gather_into(t, values, ids.contiguous(), dim, check_bounds, /*fresh=*/false, out);
}

at::Tensor ragged_bag_cpu(const at::Tensor& masks, const at::Tensor& values,
                          const at::Tensor& group_offsets, int64_t group_size, int64_t dim,
                          const at::Tensor& ids, const at::Tensor& offsets, int64_t mode,
                          const std::optional<at::Tensor>& per_sample_weights,
                          bool include_last_offset, bool check_bounds,
                          c10::string_view bag_kernel, bool /*one_warp*/,
                          std::optional<int64_t> lookups_at_once,
                          const std::optional<at::Tensor>& scale_bias) {
  const Table t =
      check_table(masks, values, group_offsets, group_size, dim, scale_bias, "ragged_bag");
  check_bag_kernel(bag_kernel);
  check_lookups_at_once(lookups_at_once, 1, "ragged_bag");
  TORCH_CHECK(ids.dim() == 1 && offsets.dim() == 1, "ragged_bag: ids and offsets must be 1-D");
  TORCH_CHECK(mode == 0 || mode == 1, "ragged_bag: mode must be 0 (sum) or 1 (mean), got ",
              mode);
  const bool weighted = per_sample_weights.has_value() && per_sample_weights->defined();
  TORCH_CHECK(!weighted || mode == 0, "ragged_bag: per_sample_weights need mode sum");
  TORCH_CHECK(!weighted || per_sample_weights->numel() == ids.numel(),
              "ragged_bag: per_sample_weights must have one weight per id");
  check_ids_dtype(ids, "ragged_bag");
  // ids are read as they are (int32 or int64); the offsets, one per bag, are widened
  const at::Tensor ids_c = ids.contiguous();
  const at::Tensor off_c = offsets.contiguous().to(at::kLong);
  const int64_t m_ids = ids_c.numel();
  const int64_t n_offsets = off_c.numel();
  const int64_t bags = include_last_offset ? std::max<int64_t>(n_offsets - 1, 0) : n_offsets;
  const int64_t* op = off_c.data_ptr<int64_t>();
  check_bag_offsets(op, n_offsets, m_ids);
  at::Tensor out = at::empty({bags, dim}, values.options().dtype(output_type(values)));
  const bool mean = mode == 1;
  AT_DISPATCH_FLOATING_TYPES_AND3(at::kHalf, at::kBFloat16, at::kByte, values.scalar_type(),
                                  "ragged_bag_cpu", [&] {
    using out_t = read_t<scalar_t>;
    using acc_t = at::opmath_type<out_t>;
    // the weights in the accumulation type (no copy for float32 weights of a float32,
    // float16, bfloat16 or int8 table)
    at::Tensor w_c;
    if (weighted) {
      w_c = per_sample_weights->contiguous().to(c10::CppTypeToScalarType<acc_t>::value);
    }
    const acc_t* wp = weighted ? w_c.data_ptr<acc_t>() : nullptr;
    const scalar_t* vals = values.data_ptr<scalar_t>();
    const int64_t nnz = values.numel();
    out_t* outp = out.data_ptr<out_t>();
    const auto bag_end = [&](int64_t b) { return b + 1 < n_offsets ? op[b + 1] : m_ids; };
    AT_DISPATCH_INDEX_TYPES(ids_c.scalar_type(), "ragged_bag_cpu_ids", [&] {
      const index_t* idp = ids_c.data_ptr<index_t>();
      if (check_bounds) check_ids(idp, m_ids, t.rows, "ragged_bag");
      // grain: 64 bags of the bench's 26 lookups (~1700 lookups) per task
      at::parallel_for(0, bags, 64, [&](int64_t begin, int64_t end) {
        if (bags_fast(t, idp, op, n_offsets, m_ids, begin, end, vals, wp, dim, mean, outp)) {
          return;
        }
        std::vector<acc_t> acc(dim);
        // Row starts and kept counts of this chunk's lookups first (metadata prefetched far
        // ahead, tile by tile), so the sums below only wait for values.
        const int64_t first = op[begin], last = bag_end(end - 1);
        std::vector<int64_t> starts(last - first), counts(last - first);
        for (int64_t i0 = first; i0 < last; i0 += kTile) {
          const int64_t count = std::min(kTile, last - i0);
          tile_starts(t, idp, i0, count, last, vals, starts.data() + (i0 - first),
                      counts.data() + (i0 - first), "ragged_bag");
        }
        for (int64_t b = begin; b < end; ++b) {
          const int64_t lo = op[b];
          const int64_t hi = bag_end(b);
          const double div = (mean && hi > lo) ? static_cast<double>(hi - lo) : 1.0;
          std::fill(acc.begin(), acc.end(), acc_t(0));
          for (int64_t i = lo; i < hi; ++i) {
            const int64_t ahead = i + kAheadValues - first;
            if (i + kAheadValues < hi && starts[ahead] >= 0) {
              prefetch_values(vals, starts[ahead], counts[ahead]);
            }
            int64_t slot = starts[i - first];
            if (slot < 0) continue;
            const int64_t id = static_cast<int64_t>(idp[i]);
            const acc_t scale = wp ? wp[i] : acc_t(1);
            const Dequant<scalar_t> dq(t.scale_bias, id);
            if (accumulate_row_fast(t.masks + id * t.words, dim, vals + slot, vals + nnz,
                                    scale, acc.data()) ||
                accumulate_row_int8(t.masks + id * t.words, dim, vals + slot, dq, scale,
                                    acc.data())) {
              continue;
            }
            for (int64_t w = 0; w < t.words; ++w) {
              uint64_t m = static_cast<uint64_t>(t.masks[id * t.words + w]);
              while (m) {
                acc[w * 64 + __builtin_ctzll(m)] +=
                    scale * static_cast<acc_t>(dq(vals[slot++]));
                m &= m - 1;
              }
            }
          }
          for (int64_t k = 0; k < dim; ++k) {
            outp[b * dim + k] = static_cast<out_t>(acc[k] / static_cast<acc_t>(div));
          }
        }
      });
    });
  });
  return out;
}

at::Tensor ragged_dot_cpu(const at::Tensor& masks_a, const at::Tensor& values_a,
                          const at::Tensor& group_offsets_a, int64_t group_size_a,
                          const at::Tensor& masks_b, const at::Tensor& values_b,
                          const at::Tensor& group_offsets_b, int64_t group_size_b, int64_t dim,
                          const at::Tensor& ids_a, const at::Tensor& ids_b, bool check_bounds,
                          bool /*one_warp*/, std::optional<int64_t> lookups_at_once,
                          const std::optional<at::Tensor>& scale_bias_a,
                          const std::optional<at::Tensor>& scale_bias_b) {
  const Table ta = check_table(masks_a, values_a, group_offsets_a, group_size_a, dim,
                              scale_bias_a, "ragged_dot (table a)");
  check_lookups_at_once(lookups_at_once, 1, "ragged_dot");
  const Table tb = check_table(masks_b, values_b, group_offsets_b, group_size_b, dim,
                              scale_bias_b, "ragged_dot (table b)");
  TORCH_CHECK(ids_a.sizes() == ids_b.sizes(), "ragged_dot: ids_a ", ids_a.sizes(),
              " and ids_b ", ids_b.sizes(), " must have the same shape");
  TORCH_CHECK(values_a.scalar_type() == values_b.scalar_type(),
              "ragged_dot: both tables must have the same value dtype");
  check_ids_dtype(ids_a, "ragged_dot");
  check_ids_dtype(ids_b, "ragged_dot");
  // int32 ids are read as they are when both sides' are int32
  const bool same = ids_a.scalar_type() == ids_b.scalar_type();
  const at::Tensor ia = same ? ids_a.contiguous() : ids_a.contiguous().to(at::kLong);
  const at::Tensor ib = same ? ids_b.contiguous() : ids_b.contiguous().to(at::kLong);
  const int64_t n = ia.numel();
  // float32 scores (float64 for float64 tables, so gradcheck-grade references work; int8
  // tables dequantize to float32)
  const auto out_type = values_a.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor out = at::empty(ids_a.sizes(), values_a.options().dtype(out_type));
  AT_DISPATCH_FLOATING_TYPES_AND3(at::kHalf, at::kBFloat16, at::kByte, values_a.scalar_type(),
                                  "ragged_dot_cpu", [&] {
    using acc_t = at::opmath_type<read_t<scalar_t>>;
    const scalar_t* va = values_a.data_ptr<scalar_t>();
    const scalar_t* vb = values_b.data_ptr<scalar_t>();
    acc_t* outp = out.data_ptr<acc_t>();
    AT_DISPATCH_INDEX_TYPES(ia.scalar_type(), "ragged_dot_cpu_ids", [&] {
      const index_t* pa = ia.data_ptr<index_t>();
      const index_t* pb = ib.data_ptr<index_t>();
      // every id checked before any is looked up; the first bad position is named
      if (check_bounds && (any_bad_id(pa, n, ta.rows) || any_bad_id(pb, n, tb.rows))) {
        for (int64_t i = 0; i < n; ++i) {
          checked_id(pa, i, ta.rows, true, "ragged_dot");
          checked_id(pb, i, tb.rows, true, "ragged_dot");
        }
      }
      at::parallel_for(0, n, 512, [&](int64_t begin, int64_t end) {
        if (dot_fast(ta, tb, pa, pb, begin, end, va, vb, dim, outp)) return;
        for (int64_t i = begin; i < end; ++i) {
          if (i + kAheadMeta < end) {
            prefetch_row_meta(ta, static_cast<int64_t>(pa[i + kAheadMeta]));
            prefetch_row_meta(tb, static_cast<int64_t>(pb[i + kAheadMeta]));
          }
          const int64_t a = checked_id(pa, i, ta.rows, false, "ragged_dot");
          const int64_t b = checked_id(pb, i, tb.rows, false, "ragged_dot");
          if (a < 0 || b < 0) {
            outp[i] = 0;
            continue;
          }
          int64_t sa = row_start(ta, a);
          int64_t sb = row_start(tb, b);
          if (!row_fits(ta, a, sa, row_count(ta, a))) {
            raise_bad_row(ta, a, sa, row_count(ta, a), "ragged_dot (table a)");
          }
          if (!row_fits(tb, b, sb, row_count(tb, b))) {
            raise_bad_row(tb, b, sb, row_count(tb, b), "ragged_dot (table b)");
          }
          const Dequant<scalar_t> dqa(ta.scale_bias, a), dqb(tb.scale_bias, b);
          acc_t acc = 0;
          for (int64_t w = 0; w < ta.words; ++w) {
            const uint64_t ma = static_cast<uint64_t>(ta.masks[a * ta.words + w]);
            const uint64_t mb = static_cast<uint64_t>(tb.masks[b * tb.words + w]);
            uint64_t both = ma & mb;
            while (both) {
              const uint64_t below = (both & -both) - 1;  // bits under the lowest shared bit
              acc += static_cast<acc_t>(dqa(va[sa + __builtin_popcountll(ma & below)])) *
                     static_cast<acc_t>(dqb(vb[sb + __builtin_popcountll(mb & below)]));
              both &= both - 1;
            }
            sa += __builtin_popcountll(ma);
            sb += __builtin_popcountll(mb);
          }
          outp[i] = acc;
        }
      });
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(mixemb, CPU, m) {
  m.impl("ragged_gather", &ragged_gather_cpu);
  m.impl("ragged_gather_out", &ragged_gather_out_cpu);
  m.impl("ragged_bag", &ragged_bag_cpu);
  m.impl("ragged_dot", &ragged_dot_cpu);
}

}  // namespace mixemb
