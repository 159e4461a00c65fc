// The fused epilogue of one output row, shared by the per-instruction-set files: each includes
// this header and instantiates EpilogueRowGeneric inside its own target-attributed function
// (internal linkage: no cross-file merging of code compiled for different instruction sets).
#pragma once

#include <cmath>
#include <cstdint>

#include "cpu/xnor_kernels.h"

namespace xnorjax {
namespace {

// dot = base - 2 * pc[o] (+ 2 * garbage[o]) (+ corr[o]); y = fma(float(dot), scale[o], bias[o]).
__attribute__((always_inline)) inline int32_t EpilogueDot(const EpilogueArgs& e, int64_t o) {
  int32_t dot = e.base - 2 * e.pc[o];
  if (e.garbage != nullptr) dot += 2 * e.garbage[o];
  if (e.corr != nullptr) dot += e.corr[o];
  return dot;
}

__attribute__((always_inline)) inline void EpilogueRowGeneric(const EpilogueArgs& e) {
  switch (e.output) {
    case XnorOutput::kInt32: {
      int32_t* __restrict dst = static_cast<int32_t*>(e.out);
      for (int64_t o = 0; o < e.n; ++o) dst[o] = EpilogueDot(e, o);
      break;
    }
    case XnorOutput::kFloat32: {
      float* __restrict dst = static_cast<float*>(e.out);
      for (int64_t o = 0; o < e.n; ++o) {
        dst[o] = std::fma(static_cast<float>(EpilogueDot(e, o)), e.scale[o], e.bias[o]);
      }
      break;
    }
    case XnorOutput::kPacked: {
      uint32_t* __restrict dst = static_cast<uint32_t*>(e.out);
      for (int64_t j = 0; 32 * j < e.n; ++j) {
        uint32_t word = 0;
        for (int64_t b = 0; b < 32 && 32 * j + b < e.n; ++b) {
          const int64_t o = 32 * j + b;
          const float y = std::fma(static_cast<float>(EpilogueDot(e, o)), e.scale[o], e.bias[o]);
          word |= static_cast<uint32_t>(y >= 0.0f) << b;
        }
        dst[j] = word;
      }
      break;
    }
  }
}

}  // namespace
}  // namespace xnorjax
