// AVX-512 VPOPCNTDQ microkernel: 16 output channels per register, 6 pixels x 4 registers
// (24 accumulators) per block, one broadcast input word XORed with 4 weight registers per step.
// Only functions with the target attribute below use AVX-512; the dispatcher calls them only on
// CPUs that have it (the module itself runs on any x86-64).
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "cpu/xnor_epilogue.h"
#include "cpu/xnor_kernels.h"

#define XNORJAX_TARGET_AVX512 \
  __attribute__((target("avx512f,avx512vl,avx512bw,avx512vpopcntdq,popcnt,fma")))

namespace xnorjax {
namespace {

constexpr int kRows = 6;   // pixels per block
constexpr int kCols = 4;   // registers of 16 output channels per block

// `last` masks the lanes of the last of the Q registers that exist (loads never read past them).
template <int P, int Q>
XNORJAX_TARGET_AVX512 inline void Block(const uint32_t* a, int64_t lda, const uint32_t* bt,
                                        int64_t ldb, int64_t kw, int32_t* out, int64_t ldo,
                                        __mmask16 last) {
  __m512i acc[P][Q];
#pragma GCC unroll 8
  for (int p = 0; p < P; ++p) {
#pragma GCC unroll 8
    for (int q = 0; q < Q; ++q) acc[p][q] = _mm512_setzero_si512();
  }
  for (int64_t k = 0; k < kw; ++k) {
    __m512i b[Q];
#pragma GCC unroll 8
    for (int q = 0; q < Q - 1; ++q) b[q] = _mm512_loadu_si512(bt + k * ldb + 16 * q);
    b[Q - 1] = _mm512_maskz_loadu_epi32(last, bt + k * ldb + 16 * (Q - 1));
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
                                 int64_t ldb, int64_t kw, int32_t* out, int64_t ldo,
                                 __mmask16 last) {
  int64_t r = 0;
  for (; r + kRows <= rows; r += kRows) {
    Block<kRows, Q>(a + r * lda, lda, bt, ldb, kw, out + r * ldo, ldo, last);
  }
  const uint32_t* ar = a + r * lda;
  int32_t* outr = out + r * ldo;
  switch (rows - r) {
    case 5: Block<5, Q>(ar, lda, bt, ldb, kw, outr, ldo, last); break;
    case 4: Block<4, Q>(ar, lda, bt, ldb, kw, outr, ldo, last); break;
    case 3: Block<3, Q>(ar, lda, bt, ldb, kw, outr, ldo, last); break;
    case 2: Block<2, Q>(ar, lda, bt, ldb, kw, outr, ldo, last); break;
    case 1: Block<1, Q>(ar, lda, bt, ldb, kw, outr, ldo, last); break;
    default: break;
  }
}

}  // namespace

XNORJAX_TARGET_AVX512 void PopcountGemmAvx512(const uint32_t* a, int64_t lda, int64_t rows,
                                              const uint32_t* bt, int64_t ldb, int64_t cols,
                                              int64_t kw, int32_t* out, int64_t ldo) {
  for (int64_t c = 0; c < cols; c += 16 * kCols) {
    const int64_t width = std::min<int64_t>(cols - c, 16 * kCols);
    const int regs = static_cast<int>((width + 15) / 16);
    const int tail = static_cast<int>(width - 16 * (regs - 1));
    const __mmask16 last = static_cast<__mmask16>(tail == 16 ? 0xFFFF : (1u << tail) - 1u);
    switch (regs) {
      case 4: Strip<4>(a, lda, rows, bt + c, ldb, kw, out + c, ldo, last); break;
      case 3: Strip<3>(a, lda, rows, bt + c, ldb, kw, out + c, ldo, last); break;
      case 2: Strip<2>(a, lda, rows, bt + c, ldb, kw, out + c, ldo, last); break;
      default: Strip<1>(a, lda, rows, bt + c, ldb, kw, out + c, ldo, last); break;
    }
  }
}

XNORJAX_TARGET_AVX512 void AddColumnPopcountsAvx512(const uint32_t* row, int64_t n, uint32_t mask,
                                                    int32_t* acc) {
  const __m512i m = _mm512_set1_epi32(static_cast<int>(mask));
  for (int64_t o = 0; o < n; o += 16) {
    const __mmask16 lanes =
        static_cast<__mmask16>(n - o >= 16 ? 0xFFFF : (1u << (n - o)) - 1u);
    const __m512i v = _mm512_and_si512(_mm512_maskz_loadu_epi32(lanes, row + o), m);
    const __m512i sum = _mm512_add_epi32(_mm512_maskz_loadu_epi32(lanes, acc + o),
                                         _mm512_popcnt_epi32(v));
    _mm512_mask_storeu_epi32(acc + o, lanes, sum);
  }
}

// The epilogue on 16 channels per register; packed output straight from the compare masks.
XNORJAX_TARGET_AVX512 void EpilogueRowAvx512(const EpilogueArgs& e) {
  const __m512i base = _mm512_set1_epi32(e.base);
  // Packed words as 16-bit halves (x86 is little-endian: word j = halves 2j, 2j + 1).
  unsigned char* packed = static_cast<unsigned char*>(e.out);
  for (int64_t o = 0; o < e.n; o += 16) {
    const __mmask16 lanes =
        static_cast<__mmask16>(e.n - o >= 16 ? 0xFFFF : (1u << (e.n - o)) - 1u);
    __m512i dot = _mm512_sub_epi32(
        base, _mm512_slli_epi32(_mm512_maskz_loadu_epi32(lanes, e.pc + o), 1));
    if (e.garbage != nullptr) {
      dot = _mm512_add_epi32(dot,
                             _mm512_slli_epi32(_mm512_maskz_loadu_epi32(lanes, e.garbage + o), 1));
    }
    if (e.corr != nullptr) dot = _mm512_add_epi32(dot, _mm512_maskz_loadu_epi32(lanes, e.corr + o));
    if (e.output == XnorOutput::kInt32) {
      _mm512_mask_storeu_epi32(static_cast<int32_t*>(e.out) + o, lanes, dot);
      continue;
    }
    const __m512 y = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_maskz_loadu_ps(lanes, e.scale + o),
                                     _mm512_maskz_loadu_ps(lanes, e.bias + o));
    if (e.output == XnorOutput::kFloat32) {
      _mm512_mask_storeu_ps(static_cast<float*>(e.out) + o, lanes, y);
    } else {
      const uint16_t bits = _mm512_mask_cmp_ps_mask(lanes, y, _mm512_setzero_ps(), _CMP_GE_OQ);
      std::memcpy(packed + 2 * (o / 16), &bits, 2);
    }
  }
  // A packed row ends on a whole word: zero its upper half when n stops inside the lower one.
  if (e.output == XnorOutput::kPacked && (e.n % 32) != 0 && (e.n % 32) <= 16) {
    std::memset(packed + 2 * ((e.n + 15) / 16), 0, 2);
  }
}

}  // namespace xnorjax
