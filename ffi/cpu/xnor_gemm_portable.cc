// Portable microkernel: plain C++ (no intrinsics), the fallback on CPUs without AVX2 and the
// readable statement of what the SIMD microkernels compute.
#include <cstdint>

#include "cpu/xnor_epilogue.h"
#include "cpu/xnor_kernels.h"

namespace xnorjax {
namespace {

// Bit count of a 32-bit word without relying on a popcount instruction.
inline int32_t Popcount32(uint32_t v) {
  v = v - ((v >> 1) & 0x55555555u);
  v = (v & 0x33333333u) + ((v >> 2) & 0x33333333u);
  v = (v + (v >> 4)) & 0x0F0F0F0Fu;
  return static_cast<int32_t>((v * 0x01010101u) >> 24);
}

}  // namespace

void PopcountGemmPortable(const RowSource& a, int64_t rows, const uint32_t* bt, int64_t ldb,
                          int64_t cols, int32_t* out, int64_t ldo) {
  for (int64_t r = 0; r < rows; ++r) {
    int32_t* row = out + r * ldo;
    for (int64_t o = 0; o < cols; ++o) row[o] = 0;
    for (int64_t s = 0; s < a.segments; ++s) {
      const uint32_t* words = a.rows[r] + a.seg_offset[s];
      for (int64_t j = 0; j < a.seg_len; ++j) {
        const uint32_t* weights = bt + (s * a.seg_len + j) * ldb;
        for (int64_t o = 0; o < cols; ++o) row[o] += Popcount32(words[j] ^ weights[o]);
      }
    }
  }
}

void AddColumnPopcountsPortable(const uint32_t* rows, int64_t nrows, int64_t ld, int64_t n,
                                uint32_t last_mask, int32_t* acc) {
  for (int64_t j = 0; j < nrows; ++j) {
    const uint32_t mask = j == nrows - 1 ? last_mask : 0xFFFFFFFFu;
    for (int64_t o = 0; o < n; ++o) acc[o] += Popcount32(rows[j * ld + o] & mask);
  }
}

void EpilogueRowPortable(const EpilogueArgs& e) { EpilogueRowGeneric(e); }

}  // namespace xnorjax
