// Winograd F(4x4, 3x3) float32 convolution for training on the CPU (Lavin & Gray, 2016): a 3x3
// conv of stride 1 computed per 4x4 output tile from the 6x6 input tile around it, in a transformed
// domain where it takes 36 multiply-adds per input and output channel instead of 144 (4x fewer).
// Per group of tiles sized to stay in the L3 cache: the input tiles are transformed (V = B^T d B),
// multiplied with the transformed kernel (M[ab] = V[ab] U[ab], 36 matrix products on the direct
// conv's microkernel, cpu/float_conv.h) and transformed back (Y = A^T M A). The kernel gradient is
// the same per-point product transposed: dU[ab] = sum over tiles of V[ab]^T (A dY A^T)[ab].
// The transformed kernel U = G k G^T and dk = G^T dU G are small and left to the caller
// (xnorjax/ops/winograd.py). F(4x4, 3x3)'s rounding error is about 10x that of the direct sum
// (relative 1e-5 instead of 1e-6 in float32). The transformed tiles live in per-thread scratch
// buffers kept between calls (up to about 24 MiB for a thread that calls these, 1 MiB for a pool
// thread).
#pragma once

#include <cstdint>
#include <string>

#include "cpu/float_conv.h"

namespace xnorjax {

constexpr int64_t kWinogradPoints = 36;  // 6 x 6 points of the transformed domain

// ValidateFloatConvProblem, and a 3x3 kernel with pads of at most 2 per side.
std::string ValidateWinogradProblem(FloatConvProblem* p);

// y f32[N, Ho, Wo, O] = the conv of x with the kernel whose transform is u f32[36, C, O].
void RunWinogradConv(const FloatConvProblem& p, const float* x, const float* u, float* y,
                     int64_t threads, const ParallelFor& parallel_for);

// du f32[36, C, O] = the gradient with respect to u of sum(g * conv), g f32[N, Ho, Wo, O]. Each
// du element is summed by one thread in a fixed order: the result does not depend on the number
// of threads.
void RunWinogradKernelGrad(const FloatConvProblem& p, const float* x, const float* g, float* du,
                           int64_t threads, const ParallelFor& parallel_for);

}  // namespace xnorjax
