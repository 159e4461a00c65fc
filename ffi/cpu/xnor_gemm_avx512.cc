// AVX-512 VPOPCNTDQ microkernel: 16 output channels per register, 6 pixels x 4 registers
// (24 accumulators) per block, one broadcast input word XORed with 4 weight registers per step.
// Only functions with the target attribute below use AVX-512; the dispatcher calls them only on
// CPUs that have it (the module itself runs on any x86-64).
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "cpu/xnor_kernels.h"

#define XNORJAX_TARGET_AVX512 \
  __attribute__((target("avx512f,avx512vl,avx512bw,avx512vpopcntdq,popcnt,fma")))

namespace xnorjax {
namespace {

constexpr int kRows = 6;   // pixels per block
constexpr int kCols = 4;   // registers of 16 output channels per block

// The epilogue of a block, from the accumulators: channels [c, c + 16 Q) of rows e[0, P)
// (see EpilogueArgs; garbage, scale and bias are the same for every row).
template <int P, int Q>
XNORJAX_TARGET_AVX512 inline void EpilogueBlock(const __m512i (&acc)[P][Q], const EpilogueArgs* e,
                                                int64_t c, __mmask16 last) {
  __m512i offset[Q];  // base + 2 * weight tail bits
  __m512 scale[Q], bias[Q];
  const bool floats = e[0].output != XnorOutput::kInt32;
#pragma GCC unroll 8
  for (int q = 0; q < Q; ++q) {
    const __mmask16 m = q == Q - 1 ? last : 0xFFFF;
    const int64_t o = c + 16 * q;
    offset[q] = _mm512_set1_epi32(e[0].base);
    if (e[0].garbage != nullptr) {
      offset[q] = _mm512_add_epi32(
          offset[q], _mm512_slli_epi32(_mm512_maskz_loadu_epi32(m, e[0].garbage + o), 1));
    }
    if (floats) {
      scale[q] = _mm512_maskz_loadu_ps(m, e[0].scale + o);
      bias[q] = _mm512_maskz_loadu_ps(m, e[0].bias + o);
    }
  }
#pragma GCC unroll 8
  for (int p = 0; p < P; ++p) {
    const int32_t* corr = e[p].corr;
#pragma GCC unroll 8
    for (int q = 0; q < Q; ++q) {
      const __mmask16 m = q == Q - 1 ? last : 0xFFFF;
      const int64_t o = c + 16 * q;
      __m512i dot = _mm512_sub_epi32(offset[q], _mm512_slli_epi32(acc[p][q], 1));
      if (corr != nullptr) dot = _mm512_add_epi32(dot, _mm512_maskz_loadu_epi32(m, corr + o));
      switch (e[p].output) {
        case XnorOutput::kInt32:
          _mm512_mask_storeu_epi32(static_cast<int32_t*>(e[p].out) + o, m, dot);
          break;
        case XnorOutput::kFloat32:
          _mm512_mask_storeu_ps(static_cast<float*>(e[p].out) + o, m,
                                _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale[q], bias[q]));
          break;
        case XnorOutput::kPacked: {
          const __m512 y = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale[q], bias[q]);
          const uint16_t bits = _mm512_mask_cmp_ps_mask(m, y, _mm512_setzero_ps(), _CMP_GE_OQ);
          std::memcpy(static_cast<unsigned char*>(e[p].out) + o / 8, &bits, 2);
          break;
        }
      }
    }
    // c is a multiple of 64: an odd number of 16-channel halves ends inside a packed word, whose
    // upper half is zero.
    if (e[p].output == XnorOutput::kPacked && Q % 2 == 1) {
      std::memset(static_cast<unsigned char*>(e[p].out) + (c + 16 * Q) / 8, 0, 2);
    }
  }
}

// `rows` are the block's P row pointers; `last` masks the lanes of the last of the Q registers
// that exist (loads never read past them). The popcounts go to out (kFused false) or through the
// rows' epilogues e[0, P) at channel offset c (kFused true).
template <int P, int Q, bool kFused>
XNORJAX_TARGET_AVX512 inline void Block(const RowSource& a, const uint32_t* const* rows,
                                        const uint32_t* bt, int64_t ldb, int32_t* out,
                                        int64_t ldo, const EpilogueArgs* e, int64_t c,
                                        __mmask16 last) {
  __m512i acc[P][Q];
#pragma GCC unroll 8
  for (int p = 0; p < P; ++p) {
#pragma GCC unroll 8
    for (int q = 0; q < Q; ++q) acc[p][q] = _mm512_setzero_si512();
  }
  for (int64_t s = 0; s < a.segments; ++s) {
    const uint32_t* ap[P];
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p) ap[p] = rows[p] + a.seg_offset[s];
    const uint32_t* bs = bt + s * a.seg_len * ldb;
    for (int64_t j = 0; j < a.seg_len; ++j, bs += ldb) {
      __m512i b[Q];
#pragma GCC unroll 8
      for (int q = 0; q < Q - 1; ++q) b[q] = _mm512_loadu_si512(bs + 16 * q);
      b[Q - 1] = _mm512_maskz_loadu_epi32(last, bs + 16 * (Q - 1));
#pragma GCC unroll 8
      for (int p = 0; p < P; ++p) {
        const __m512i av = _mm512_set1_epi32(static_cast<int>(ap[p][j]));
#pragma GCC unroll 8
        for (int q = 0; q < Q; ++q) {
          acc[p][q] =
              _mm512_add_epi32(acc[p][q], _mm512_popcnt_epi32(_mm512_xor_si512(av, b[q])));
        }
      }
    }
  }
  if constexpr (kFused) {
    EpilogueBlock<P, Q>(acc, e, c, last);
  } else {
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p) {
#pragma GCC unroll 8
      for (int q = 0; q < Q; ++q) _mm512_storeu_si512(out + p * ldo + 16 * q, acc[p][q]);
    }
  }
}

template <int Q, bool kFused>
XNORJAX_TARGET_AVX512 void Strip(const RowSource& a, int64_t rows, const uint32_t* bt, int64_t ldb,
                                 int32_t* out, int64_t ldo, const EpilogueArgs* e, int64_t c,
                                 __mmask16 last) {
  int64_t r = 0;
  for (; r + kRows <= rows; r += kRows) {
    Block<kRows, Q, kFused>(a, a.rows + r, bt, ldb, out + r * ldo, ldo, e + r, c, last);
  }
  const uint32_t* const* ar = a.rows + r;
  int32_t* outr = out + r * ldo;
  const EpilogueArgs* er = e + r;
  switch (rows - r) {
    case 5: Block<5, Q, kFused>(a, ar, bt, ldb, outr, ldo, er, c, last); break;
    case 4: Block<4, Q, kFused>(a, ar, bt, ldb, outr, ldo, er, c, last); break;
    case 3: Block<3, Q, kFused>(a, ar, bt, ldb, outr, ldo, er, c, last); break;
    case 2: Block<2, Q, kFused>(a, ar, bt, ldb, outr, ldo, er, c, last); break;
    case 1: Block<1, Q, kFused>(a, ar, bt, ldb, outr, ldo, er, c, last); break;
    default: break;
  }
}

// Strips of up to 16 * kCols channels; `out` (unfused) or the epilogues (fused) take them.
template <bool kFused>
XNORJAX_TARGET_AVX512 void Gemm(const RowSource& a, int64_t rows, const uint32_t* bt, int64_t ldb,
                                int64_t cols, int32_t* out, int64_t ldo, const EpilogueArgs* e) {
  for (int64_t c = 0; c < cols; c += 16 * kCols) {
    const int64_t width = std::min<int64_t>(cols - c, 16 * kCols);
    const int regs = static_cast<int>((width + 15) / 16);
    const int tail = static_cast<int>(width - 16 * (regs - 1));
    const __mmask16 last = static_cast<__mmask16>(tail == 16 ? 0xFFFF : (1u << tail) - 1u);
    int32_t* outc = kFused ? nullptr : out + c;
    switch (regs) {
      case 4: Strip<4, kFused>(a, rows, bt + c, ldb, outc, ldo, e, c, last); break;
      case 3: Strip<3, kFused>(a, rows, bt + c, ldb, outc, ldo, e, c, last); break;
      case 2: Strip<2, kFused>(a, rows, bt + c, ldb, outc, ldo, e, c, last); break;
      default: Strip<1, kFused>(a, rows, bt + c, ldb, outc, ldo, e, c, last); break;
    }
  }
}

}  // namespace

XNORJAX_TARGET_AVX512 void PopcountGemmAvx512(const RowSource& a, int64_t rows,
                                              const uint32_t* bt, int64_t ldb, int64_t cols,
                                              int32_t* out, int64_t ldo) {
  Gemm<false>(a, rows, bt, ldb, cols, out, ldo, nullptr);
}

XNORJAX_TARGET_AVX512 void PopcountGemmEpilogueAvx512(const RowSource& a, int64_t rows,
                                                      const uint32_t* bt, int64_t ldb,
                                                      int64_t cols, const EpilogueArgs* epilogue) {
  Gemm<true>(a, rows, bt, ldb, cols, nullptr, 0, epilogue);
}

XNORJAX_TARGET_AVX512 void AddColumnPopcountsAvx512(const uint32_t* rows, int64_t nrows,
                                                    int64_t ld, int64_t n, uint32_t last_mask,
                                                    int32_t* acc) {
  const __m512i last = _mm512_set1_epi32(static_cast<int>(last_mask));
  for (int64_t o = 0; o < n; o += 16) {
    const __mmask16 lanes =
        static_cast<__mmask16>(n - o >= 16 ? 0xFFFF : (1u << (n - o)) - 1u);
    __m512i sum = _mm512_maskz_loadu_epi32(lanes, acc + o);
    for (int64_t j = 0; j + 1 < nrows; ++j) {
      const __m512i word = _mm512_maskz_loadu_epi32(lanes, rows + j * ld + o);
      sum = _mm512_add_epi32(sum, _mm512_popcnt_epi32(word));
    }
    const __m512i tail = _mm512_maskz_loadu_epi32(lanes, rows + (nrows - 1) * ld + o);
    sum = _mm512_add_epi32(sum, _mm512_popcnt_epi32(_mm512_and_si512(tail, last)));
    _mm512_mask_storeu_epi32(acc + o, lanes, sum);
  }
}

}  // namespace xnorjax
