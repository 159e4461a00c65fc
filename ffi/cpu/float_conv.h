// Float32 convolutions for training on the CPU: NHWC input, HWIO kernel, stride 1, zero padding.
// The forward conv also gives a conv's input gradient (the output gradient convolved with the
// flipped kernel, its channel axes swapped); the kernel gradient is its own loop. On bin_vgg16's
// layer shapes XLA's CPU convs reach about half the rate of its best float32 matmul, its kernel
// gradients less; these AVX-512 microkernels about all of it (180-230 GMAC/s on the 2-core Zen 5;
// experiments/bench/conv_formulations.py).
#pragma once

#include <cstdint>
#include <string>

#include "cpu/xnor_kernels.h"  // ParallelFor

namespace xnorjax {

struct FloatConvProblem {
  int64_t batch = 0, height = 0, width = 0, channels = 0;  // x: f32[N, H, W, C]
  int64_t out_channels = 0, kernel_h = 0, kernel_w = 0;    // k: f32[KH, KW, C, O]
  int64_t pad_top = 0, pad_bottom = 0, pad_left = 0, pad_right = 0;
  int64_t out_h = 0, out_w = 0;  // set by ValidateFloatConvProblem
};

// Checks the sizes (all positive, pads non-negative, kernel no larger than the padded input) and
// sets out_h / out_w. Returns an error message, empty when valid.
std::string ValidateFloatConvProblem(FloatConvProblem* p);

// True when this CPU runs the kernels (AVX-512F with FMA).
bool FloatConvSupported();

// y[n, h, w, o] = sum_{i, j, c} xpad[n, h + i, w + j, c] * k[i, j, c, o]. y: f32[N, Ho, Wo, O].
void RunFloatConv(const FloatConvProblem& p, const float* x, const float* k, float* y,
                  int64_t threads, const ParallelFor& parallel_for);

// dk[i, j, c, o] = sum_{n, h, w} xpad[n, h + i, w + j, c] * g[n, h, w, o], g: f32[N, Ho, Wo, O].
// Each dk element is summed by one thread in a fixed order: the result does not depend on the
// number of threads.
void RunFloatConvKernelGrad(const FloatConvProblem& p, const float* x, const float* g, float* dk,
                            int64_t threads, const ParallelFor& parallel_for);

// Building blocks for other convs written as matrix products (cpu/winograd.cc):
// y for output pixels [m0, m0 + 12) (clamped to the problem's pixels) and output channels
// [o, o + 32) (clamped), as in RunFloatConv; `zeros` holds p.channels zeros.
void FloatConvBlock(const FloatConvProblem& p, const float* x, const float* k, const float* zeros,
                    float* y, int64_t m0, int64_t o);
constexpr int64_t kFloatConvBlockPixels = 12;
constexpr int64_t kFloatConvBlockChannels = 32;
// dk[c0 .. c0 + rows, o .. o + 32] (clamped to c_in, c_out; row stride c_out) += sum over
// q < count of x_rows[q][c] * g[q * c_out + o'], in the order of q; rows <= 8.
void FloatKernelGradRows(const float* const* x_rows, const float* g, int64_t count, int64_t c_in,
                         int64_t c_out, int64_t c0, int64_t o, float* dk);
constexpr int64_t kFloatKernelGradRows = 8;

}  // namespace xnorjax
