// The machine's XNOR-popcount ceiling, measured (for experiments/bench/kernels.py).
#pragma once

#include <cstdint>

namespace xnorjax {

// bit-MACs per second of XOR + VPOPCNTQ + add on 512-bit registers over `threads` threads for
// about `seconds` (one window: on a shared machine, take the best of several short windows);
// 0 when the CPU has no AVX-512 VPOPCNTDQ.
double PopcountCeiling(int64_t threads, double seconds);

}  // namespace xnorjax
