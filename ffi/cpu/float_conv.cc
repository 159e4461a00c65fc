// AVX-512 float32 conv and kernel-gradient microkernels (see float_conv.h). Padding is never
// materialized: a tap that falls outside the input reads a row of zeros instead.
#include "cpu/float_conv.h"

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#define XNORJAX_TARGET_AVX512F __attribute__((target("avx512f,fma")))

namespace xnorjax {
namespace {

constexpr int kPixels = kFloatConvBlockPixels;  // conv: output pixels per block (12 x 2 registers)
constexpr int kTilesPerTask = 16;  // conv: pixel blocks per parallel task
constexpr int kInRows = kFloatKernelGradRows;  // kernel gradient: input channels per block
constexpr int kChunk = 128;       // kernel gradient: pixels per pass over a thread's blocks
constexpr int64_t kOutBlock = kFloatConvBlockChannels;  // output channels per block (2 x 16)

// Masks of the two 16-channel registers of the output block starting at channel o.
inline void BlockMasks(int64_t o, int64_t out_channels, __mmask16* m0, __mmask16* m1) {
  const int64_t left = out_channels - o;
  *m0 = left >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << left) - 1);
  *m1 = left >= 32 ? 0xFFFF : left <= 16 ? 0 : static_cast<__mmask16>((1u << (left - 16)) - 1);
}

// The start of input pixel (n, ih, iw), or `zeros` outside the input (zero padding).
inline const float* InputRow(const FloatConvProblem& p, const float* x, const float* zeros,
                             int64_t n, int64_t ih, int64_t iw) {
  if (ih < 0 || ih >= p.height || iw < 0 || iw >= p.width) return zeros;
  return x + ((n * p.height + ih) * p.width + iw) * p.channels;
}

// Output pixels m0, m0 + 1, ... as (n, oh, ow): one division, then increments (divisions per tap
// and pixel would cost as much as the arithmetic on small layers).
struct Pixel {
  int64_t n, oh, ow;
};
inline void FillPixels(const FloatConvProblem& p, int64_t m0, int64_t count, Pixel* out) {
  Pixel q{m0 / (p.out_h * p.out_w), (m0 / p.out_w) % p.out_h, m0 % p.out_w};
  for (int64_t t = 0; t < count; ++t) {
    out[t] = q;
    if (++q.ow == p.out_w) {
      q.ow = 0;
      if (++q.oh == p.out_h) q.oh = 0, ++q.n;
    }
  }
}

// The input pixel that tap (i, j) of output pixel q reads.
inline const float* TapRow(const FloatConvProblem& p, const float* x, const float* zeros,
                           const Pixel& q, int64_t i, int64_t j) {
  return InputRow(p, x, zeros, q.n, q.oh + i - p.pad_top, q.ow + j - p.pad_left);
}

// Loads 16 floats, masked unless the block is full (masked loads cost 7-10% in these loops).
template <bool kFull>
XNORJAX_TARGET_AVX512F inline __m512 Load16(__mmask16 mask, const float* from) {
  return kFull ? _mm512_loadu_ps(from) : _mm512_maskz_loadu_ps(mask, from);
}

// y for output pixels [m0, m0 + kPixels) (clamped to M) and output channels [o, o + 32);
// kFull: all 32 channels exist.
template <bool kFull>
XNORJAX_TARGET_AVX512F void ConvBlock(const FloatConvProblem& p, const float* x, const float* k,
                                      const float* zeros, float* y, int64_t m0, int64_t o) {
  const int64_t pixels = p.batch * p.out_h * p.out_w, c_in = p.channels, c_out = p.out_channels;
  __mmask16 m_lo, m_hi;
  BlockMasks(o, c_out, &m_lo, &m_hi);
  Pixel q[kPixels];  // past the last pixel: the last pixel again (computed, not stored)
  FillPixels(p, m0, std::min<int64_t>(kPixels, pixels - m0), q);
  for (int64_t r = pixels - m0; r < kPixels; ++r) q[r] = q[pixels - m0 - 1];
  __m512 acc[kPixels][2];
  for (int r = 0; r < kPixels; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  // Every loop below runs at least once; do-whiles let GCC keep acc in registers (it spills
  // acc around a loop that might run zero times).
  int64_t tap = 0;
  do {
    const int64_t i = tap / p.kernel_w, j = tap % p.kernel_w;
    const float* row[kPixels];
    for (int r = 0; r < kPixels; ++r) row[r] = TapRow(p, x, zeros, q[r], i, j);
    const float* kt = k + tap * c_in * c_out + o;
    int64_t c = 0;
    do {
      const __m512 w0 = Load16<kFull>(m_lo, kt + c * c_out);
      const __m512 w1 = Load16<kFull>(m_hi, kt + c * c_out + 16);
      for (int r = 0; r < kPixels; ++r) {
        const __m512 v = _mm512_set1_ps(row[r][c]);
        acc[r][0] = _mm512_fmadd_ps(v, w0, acc[r][0]);
        acc[r][1] = _mm512_fmadd_ps(v, w1, acc[r][1]);
      }
    } while (++c < c_in);
  } while (++tap < p.kernel_h * p.kernel_w);
  // A constant trip count (the bound inside), so that acc stays in registers.
  for (int r = 0; r < kPixels; ++r) {
    if (m0 + r >= pixels) continue;
    float* out = y + (m0 + r) * c_out + o;
    _mm512_mask_storeu_ps(out, m_lo, acc[r][0]);
    _mm512_mask_storeu_ps(out + 16, m_hi, acc[r][1]);
  }
}

// dk[tap, c0 .. c0 + R, o .. o + 32] += sum over the chunk's pixels q of rows[q][c] * g[q, o].
template <int R, bool kFull>
XNORJAX_TARGET_AVX512F void KernelGradBlock(const float* const* rows, const float* g, int64_t count,
                                            int64_t c_out, int64_t c0, int64_t o, float* dk_tap) {
  __mmask16 m_lo, m_hi;
  BlockMasks(o, c_out, &m_lo, &m_hi);
  __m512 acc[R][2];
  float* d = dk_tap + c0 * c_out + o;
  for (int r = 0; r < R; ++r) {
    acc[r][0] = _mm512_maskz_loadu_ps(m_lo, d + r * c_out);
    acc[r][1] = _mm512_maskz_loadu_ps(m_hi, d + r * c_out + 16);
  }
  int64_t q = 0;
  do {  // count >= 1 (see ConvBlock on do-whiles)
    const __m512 g0 = Load16<kFull>(m_lo, g + q * c_out + o);
    const __m512 g1 = Load16<kFull>(m_hi, g + q * c_out + o + 16);
    const float* xq = rows[q] + c0;
    for (int r = 0; r < R; ++r) {
      const __m512 v = _mm512_set1_ps(xq[r]);
      acc[r][0] = _mm512_fmadd_ps(v, g0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(v, g1, acc[r][1]);
    }
  } while (++q < count);
  for (int r = 0; r < R; ++r) {
    _mm512_mask_storeu_ps(d + r * c_out, m_lo, acc[r][0]);
    _mm512_mask_storeu_ps(d + r * c_out + 16, m_hi, acc[r][1]);
  }
}

using KernelGradFn = void (*)(const float* const*, const float*, int64_t, int64_t, int64_t,
                              int64_t, float*);
// [full output block][input rows]
constexpr KernelGradFn kKernelGradBlocks[2][kInRows + 1] = {
    {nullptr, KernelGradBlock<1, false>, KernelGradBlock<2, false>, KernelGradBlock<3, false>,
     KernelGradBlock<4, false>, KernelGradBlock<5, false>, KernelGradBlock<6, false>,
     KernelGradBlock<7, false>, KernelGradBlock<8, false>},
    {nullptr, KernelGradBlock<1, true>, KernelGradBlock<2, true>, KernelGradBlock<3, true>,
     KernelGradBlock<4, true>, KernelGradBlock<5, true>, KernelGradBlock<6, true>,
     KernelGradBlock<7, true>, KernelGradBlock<8, true>}};

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

std::string ValidateFloatConvProblem(FloatConvProblem* p) {
  if (p->batch < 0) return "batch must be >= 0";  // an empty batch: y empty, dk zero
  if (p->height < 1 || p->width < 1 || p->channels < 1 || p->out_channels < 1 ||
      p->kernel_h < 1 || p->kernel_w < 1) {
    return "height, width, channels, out_channels and the kernel size must be >= 1";
  }
  if (p->pad_top < 0 || p->pad_bottom < 0 || p->pad_left < 0 || p->pad_right < 0) {
    return "pads must be >= 0";
  }
  p->out_h = p->height + p->pad_top + p->pad_bottom - p->kernel_h + 1;
  p->out_w = p->width + p->pad_left + p->pad_right - p->kernel_w + 1;
  if (p->out_h < 1 || p->out_w < 1) {
    return "the kernel (" + std::to_string(p->kernel_h) + "x" + std::to_string(p->kernel_w) +
           ") is larger than the padded input (" + std::to_string(p->height + p->pad_top +
           p->pad_bottom) + "x" + std::to_string(p->width + p->pad_left + p->pad_right) + ")";
  }
  return "";
}

bool FloatConvSupported() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
}

void FloatConvBlock(const FloatConvProblem& p, const float* x, const float* k, const float* zeros,
                    float* y, int64_t m0, int64_t o) {
  (o + kOutBlock <= p.out_channels ? ConvBlock<true> : ConvBlock<false>)(p, x, k, zeros, y, m0, o);
}

void FloatKernelGradRows(const float* const* x_rows, const float* g, int64_t count, int64_t c_in,
                         int64_t c_out, int64_t c0, int64_t o, float* dk) {
  const int64_t r = std::min<int64_t>(kInRows, c_in - c0);
  kKernelGradBlocks[o + kOutBlock <= c_out][r](x_rows, g, count, c_out, c0, o, dk);
}

void RunFloatConv(const FloatConvProblem& p, const float* x, const float* k, float* y,
                  int64_t threads, const ParallelFor& parallel_for) {
  const std::vector<float> zeros(p.channels, 0.0f);
  const int64_t blocks = CeilDiv(p.batch * p.out_h * p.out_w, kPixels);
  const int64_t tasks = CeilDiv(blocks, kTilesPerTask);
  const int64_t out_blocks = CeilDiv(p.out_channels, kOutBlock);
  parallel_for(tasks * out_blocks, threads, [&](int64_t task) {
    const int64_t first = (task / out_blocks) * kTilesPerTask;
    const int64_t o = (task % out_blocks) * kOutBlock;
    for (int64_t b = first; b < std::min(blocks, first + kTilesPerTask); ++b) {
      FloatConvBlock(p, x, k, zeros.data(), y, b * kPixels, o);
    }
  });
}

void RunFloatConvKernelGrad(const FloatConvProblem& p, const float* x, const float* g, float* dk,
                            int64_t threads, const ParallelFor& parallel_for) {
  const int64_t c_in = p.channels, c_out = p.out_channels;
  std::fill(dk, dk + p.kernel_h * p.kernel_w * c_in * c_out, 0.0f);
  const std::vector<float> zeros(c_in, 0.0f);
  const int64_t pixels = p.batch * p.out_h * p.out_w;
  const int64_t in_blocks = CeilDiv(c_in, kInRows), out_blocks = CeilDiv(c_out, kOutBlock);
  const int64_t per_tap = in_blocks * out_blocks, blocks = p.kernel_h * p.kernel_w * per_tap;
  // Each item owns a contiguous range of (tap, input block, output block) blocks of dk and sweeps
  // every pixel, a chunk at a time, over its blocks: g and x are read once per item.
  const int64_t items = std::max<int64_t>(1, std::min(threads, blocks));
  parallel_for(items, items, [&](int64_t item) {
    const int64_t begin = blocks * item / items, end = blocks * (item + 1) / items;
    const float* rows[kChunk];
    Pixel q[kChunk];
    for (int64_t m0 = 0; m0 < pixels; m0 += kChunk) {
      const int64_t count = std::min<int64_t>(kChunk, pixels - m0);
      FillPixels(p, m0, count, q);
      int64_t rows_tap = -1;
      for (int64_t b = begin; b < end; ++b) {
        const int64_t tap = b / per_tap, c0 = (b % per_tap) / out_blocks * kInRows;
        const int64_t o = (b % out_blocks) * kOutBlock;
        if (tap != rows_tap) {
          for (int64_t t = 0; t < count; ++t) {
            rows[t] = TapRow(p, x, zeros.data(), q[t], tap / p.kernel_w, tap % p.kernel_w);
          }
          rows_tap = tap;
        }
        FloatKernelGradRows(rows, g + m0 * c_out, count, c_in, c_out, c0, o,
                            dk + tap * c_in * c_out);
      }
    }
  });
}

}  // namespace xnorjax
