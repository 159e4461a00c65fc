// AVX-512 VPOPCNTDQ microkernel: 16 output channels per register, 6 pixels x 4 registers
// (24 accumulators) per block, one broadcast input word XORed with 4 weight registers per step.
// Only functions with the target attribute below use AVX-512; the dispatcher calls them only on
// CPUs that have it (the module itself runs on any x86-64).
#include <immintrin.h>

#include <cstdint>

#include "cpu/xnor_kernels.h"

#define XNORJAX_TARGET_AVX512 \
  __attribute__((target("avx512f,avx512vl,avx512bw,avx512vpopcntdq,popcnt")))

namespace xnorjax {
namespace {

constexpr int kRows = 6;   // pixels per block
constexpr int kCols = 4;   // registers of 16 output channels per block

template <int P, int Q>
XNORJAX_TARGET_AVX512 inline void Block(const uint32_t* a, int64_t lda, const uint32_t* bt,
                                        int64_t ldb, int64_t kw, int32_t* out, int64_t ldo) {
  __m512i acc[P][Q];
#pragma GCC unroll 8
  for (int p = 0; p < P; ++p) {
#pragma GCC unroll 8
    for (int q = 0; q < Q; ++q) acc[p][q] = _mm512_setzero_si512();
  }
  for (int64_t k = 0; k < kw; ++k) {
    __m512i b[Q];
#pragma GCC unroll 8
    for (int q = 0; q < Q; ++q) b[q] = _mm512_loadu_si512(bt + k * ldb + 16 * q);
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p) {
      const __m512i av = _mm512_set1_epi32(static_cast<int>(a[p * lda + k]));
#pragma GCC unroll 8
      for (int q = 0; q < Q; ++q) {
        acc[p][q] = _mm512_add_epi32(acc[p][q], _mm512_popcnt_epi32(_mm512_xor_si512(av, b[q])));
      }
    }
  }
#pragma GCC unroll 8
  for (int p = 0; p < P; ++p) {
#pragma GCC unroll 8
    for (int q = 0; q < Q; ++q) _mm512_storeu_si512(out + p * ldo + 16 * q, acc[p][q]);
  }
}

template <int Q>
XNORJAX_TARGET_AVX512 void Strip(const uint32_t* a, int64_t lda, int64_t rows, const uint32_t* bt,
                                 int64_t ldb, int64_t kw, int32_t* out, int64_t ldo) {
  int64_t r = 0;
  for (; r + kRows <= rows; r += kRows) {
    Block<kRows, Q>(a + r * lda, lda, bt, ldb, kw, out + r * ldo, ldo);
  }
  switch (rows - r) {
    case 5: Block<5, Q>(a + r * lda, lda, bt, ldb, kw, out + r * ldo, ldo); break;
    case 4: Block<4, Q>(a + r * lda, lda, bt, ldb, kw, out + r * ldo, ldo); break;
    case 3: Block<3, Q>(a + r * lda, lda, bt, ldb, kw, out + r * ldo, ldo); break;
    case 2: Block<2, Q>(a + r * lda, lda, bt, ldb, kw, out + r * ldo, ldo); break;
    case 1: Block<1, Q>(a + r * lda, lda, bt, ldb, kw, out + r * ldo, ldo); break;
    default: break;
  }
}

}  // namespace

XNORJAX_TARGET_AVX512 void PopcountGemmAvx512(const uint32_t* a, int64_t lda, int64_t rows,
                                              const uint32_t* bt, int64_t ldb, int64_t cols,
                                              int64_t kw, int32_t* out, int64_t ldo) {
  int64_t c = 0;
  for (; c + 16 * kCols <= cols; c += 16 * kCols) {
    Strip<kCols>(a, lda, rows, bt + c, ldb, kw, out + c, ldo);
  }
  switch ((cols - c) / 16) {
    case 3: Strip<3>(a, lda, rows, bt + c, ldb, kw, out + c, ldo); break;
    case 2: Strip<2>(a, lda, rows, bt + c, ldb, kw, out + c, ldo); break;
    case 1: Strip<1>(a, lda, rows, bt + c, ldb, kw, out + c, ldo); break;
    default: break;
  }
}

}  // namespace xnorjax
