// AVX2 microkernel: 8 output channels per register, 2 pixels x 2 registers per block. AVX2 has no
// vector popcount, so each byte is counted with two 4-bit table lookups (vpshufb); byte counts
// accumulate for up to 31 steps (31 * 8 < 256) before they are widened to 32-bit lanes.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "cpu/xnor_epilogue.h"
#include "cpu/xnor_kernels.h"

#define XNORJAX_TARGET_AVX2 __attribute__((target("avx2,fma,popcnt")))

namespace xnorjax {
namespace {

// Bit count of a 32-bit word without a popcount instruction (vectorizes in loops).
inline int32_t Popcount32(uint32_t v) {
  v = v - ((v >> 1) & 0x55555555u);
  v = (v & 0x33333333u) + ((v >> 2) & 0x33333333u);
  v = (v + (v >> 4)) & 0x0F0F0F0Fu;
  return static_cast<int32_t>((v * 0x01010101u) >> 24);
}

constexpr int kRows = 2;
constexpr int kCols = 2;             // registers of 8 output channels
constexpr int64_t kMaxByteSteps = 31;  // byte counters hold at most 31 * 8 = 248

// Widens the byte counters into the 32-bit accumulators and clears them.
template <int P, int Q>
XNORJAX_TARGET_AVX2 inline void Flush(__m256i (&bytes)[P][Q], __m256i (&acc)[P][Q]) {
  const __m256i ones8 = _mm256_set1_epi8(1);
  const __m256i ones16 = _mm256_set1_epi16(1);
  for (int p = 0; p < P; ++p) {
    for (int q = 0; q < Q; ++q) {
      const __m256i pairs = _mm256_maddubs_epi16(bytes[p][q], ones8);
      acc[p][q] = _mm256_add_epi32(acc[p][q], _mm256_madd_epi16(pairs, ones16));
      bytes[p][q] = _mm256_setzero_si256();
    }
  }
}

// `rows` are the block's P row pointers; `lanes[q]` masks the existing lanes of register q
// (loads never read past them).
template <int P, int Q>
XNORJAX_TARGET_AVX2 inline void Block(const RowSource& a, const uint32_t* const* rows,
                                      const uint32_t* bt, int64_t ldb, int32_t* out, int64_t ldo,
                                      const __m256i* lanes) {
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                       0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low_nibbles = _mm256_set1_epi8(0x0F);
  __m256i acc[P][Q], bytes[P][Q];
  for (int p = 0; p < P; ++p) {
    for (int q = 0; q < Q; ++q) acc[p][q] = bytes[p][q] = _mm256_setzero_si256();
  }
  int64_t steps = 0;  // steps accumulated in the byte counters
  for (int64_t s = 0; s < a.segments; ++s) {
    const uint32_t* ap[P];
    for (int p = 0; p < P; ++p) ap[p] = rows[p] + a.seg_offset[s];
    const uint32_t* bs = bt + s * a.seg_len * ldb;
    for (int64_t j = 0; j < a.seg_len; ++j, bs += ldb) {
      __m256i b[Q];
      for (int q = 0; q < Q; ++q) {
        b[q] = _mm256_maskload_epi32(reinterpret_cast<const int*>(bs + 8 * q), lanes[q]);
      }
      for (int p = 0; p < P; ++p) {
        const __m256i av = _mm256_set1_epi32(static_cast<int>(ap[p][j]));
        for (int q = 0; q < Q; ++q) {
          const __m256i x = _mm256_xor_si256(av, b[q]);
          const __m256i lo = _mm256_and_si256(x, low_nibbles);
          const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), low_nibbles);
          bytes[p][q] = _mm256_add_epi8(
              bytes[p][q],
              _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi)));
        }
      }
      if (++steps == kMaxByteSteps) {
        Flush<P, Q>(bytes, acc);
        steps = 0;
      }
    }
  }
  Flush<P, Q>(bytes, acc);
  for (int p = 0; p < P; ++p) {
    for (int q = 0; q < Q; ++q) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + p * ldo + 8 * q), acc[p][q]);
    }
  }
}

}  // namespace

XNORJAX_TARGET_AVX2 void PopcountGemmAvx2(const RowSource& a, int64_t rows, const uint32_t* bt,
                                          int64_t ldb, int64_t cols, int32_t* out, int64_t ldo) {
  const __m256i lane_index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int64_t c = 0; c < cols; c += 8 * kCols) {
    __m256i lanes[kCols];
    for (int q = 0; q < kCols; ++q) {
      const int64_t valid = std::clamp<int64_t>(cols - c - 8 * q, 0, 8);
      lanes[q] = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(valid)), lane_index);
    }
    int64_t r = 0;
    for (; r + kRows <= rows; r += kRows) {
      Block<kRows, kCols>(a, a.rows + r, bt + c, ldb, out + r * ldo + c, ldo, lanes);
    }
    if (r < rows) Block<1, kCols>(a, a.rows + r, bt + c, ldb, out + r * ldo + c, ldo, lanes);
  }
}

XNORJAX_TARGET_AVX2 void AddColumnPopcountsAvx2(const uint32_t* rows, int64_t nrows, int64_t ld,
                                                int64_t n, uint32_t last_mask, int32_t* acc) {
  for (int64_t j = 0; j < nrows; ++j) {
    const uint32_t mask = j == nrows - 1 ? last_mask : 0xFFFFFFFFu;
    for (int64_t o = 0; o < n; ++o) acc[o] += Popcount32(rows[j * ld + o] & mask);
  }
}

XNORJAX_TARGET_AVX2 void EpilogueRowAvx2(const EpilogueArgs& e) { EpilogueRowGeneric(e); }

}  // namespace xnorjax
