// The CPU engine of the packed XNOR-popcount conv / dense targets: validation, CPU dispatch,
// weight transpose, per-block im2col on packed words, the microkernel call and the fused epilogue.
#include "cpu/xnor_kernels.h"

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "conv_geometry.h"

namespace xnorjax {

namespace g = geometry;

bool CpuHasAvx512Vpopcntdq() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vpopcntdq");
#else
  return false;
#endif
}

bool CpuHasAvx2() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2");
#else
  return false;
#endif
}

bool ImplSupported(int64_t impl) {
  switch (impl) {
    case static_cast<int64_t>(XnorImpl::kAuto):
    case static_cast<int64_t>(XnorImpl::kPortable):
      return true;
    case static_cast<int64_t>(XnorImpl::kAvx512):
      return CpuHasAvx512Vpopcntdq();
    case static_cast<int64_t>(XnorImpl::kAvx2):
      return CpuHasAvx2();
    default:
      return false;
  }
}

XnorImpl ResolveImpl(int64_t impl) {
  if (impl != static_cast<int64_t>(XnorImpl::kAuto)) return static_cast<XnorImpl>(impl);
  static const XnorImpl best = CpuHasAvx512Vpopcntdq() ? XnorImpl::kAvx512
                               : CpuHasAvx2()          ? XnorImpl::kAvx2
                                                       : XnorImpl::kPortable;
  return best;
}

namespace {

// Product of non-negative sizes, or -1 on int64 overflow.
int64_t CheckedProduct(std::initializer_list<int64_t> sizes) {
  int64_t product = 1;
  for (int64_t s : sizes) {
    if (__builtin_mul_overflow(product, s, &product)) return -1;
  }
  return product;
}

}  // namespace

std::string ValidateConvProblem(ConvProblem* p) {
  struct Named {
    const char* name;
    int64_t value;
  };
  for (const Named& d : {Named{"batch", p->batch}, Named{"height", p->height},
                         Named{"width", p->width}, Named{"input words", p->words},
                         Named{"channels", p->channels}, Named{"output channels", p->out_channels},
                         Named{"kernel height", p->kernel_h}, Named{"kernel width", p->kernel_w},
                         Named{"stride_h", p->stride_h}, Named{"stride_w", p->stride_w}}) {
    if (d.value < 1) return std::string(d.name) + " must be >= 1, got " + std::to_string(d.value);
    if (d.value > INT32_MAX) return std::string(d.name) + " is too large";
  }
  for (const Named& d : {Named{"pad_top", p->pad_top}, Named{"pad_bottom", p->pad_bottom},
                         Named{"pad_left", p->pad_left}, Named{"pad_right", p->pad_right}}) {
    if (d.value < 0) return std::string(d.name) + " must be >= 0, got " + std::to_string(d.value);
    if (d.value > INT32_MAX) return std::string(d.name) + " is too large";
  }
  if (p->words != g::PackedWords(p->channels)) {
    return "channels=" + std::to_string(p->channels) + " needs " +
           std::to_string(g::PackedWords(p->channels)) + " packed words, but the input has " +
           std::to_string(p->words);
  }
  if (p->pad_value < -1 || p->pad_value > 1) {
    return "pad_value must be -1, 0 or +1, got " + std::to_string(p->pad_value);
  }
  p->out_h = g::ConvOutputSize(p->height, p->kernel_h, p->stride_h, p->pad_top, p->pad_bottom);
  p->out_w = g::ConvOutputSize(p->width, p->kernel_w, p->stride_w, p->pad_left, p->pad_right);
  if (p->out_h < 1 || p->out_w < 1) return "the padded input is smaller than the kernel";
  const int64_t bits = CheckedProduct({p->kernel_h, p->kernel_w, p->channels});
  if (bits < 0 || bits > INT32_MAX) return "kernel_h * kernel_w * channels overflows int32";
  if (CheckedProduct({p->batch, p->height, p->width, p->words}) < 0 ||
      CheckedProduct({p->batch, p->out_h, p->out_w, p->out_channels + 16}) < 0 ||
      CheckedProduct({p->out_channels + 16, p->kernel_h, p->kernel_w, p->words}) < 0) {
    return "array sizes overflow int64";
  }
  return "";
}

namespace {

using GemmFn = void (*)(const uint32_t*, int64_t, int64_t, const uint32_t*, int64_t, int64_t,
                        int64_t, int32_t*, int64_t);

GemmFn GemmFor(XnorImpl impl) {
  switch (impl) {
    case XnorImpl::kAvx512: return PopcountGemmAvx512;
    case XnorImpl::kAvx2: return PopcountGemmAvx2;
    default: return PopcountGemmPortable;
  }
}

constexpr int64_t kRowBlock = 48;   // output pixels per work item (a multiple of 6 and 2)
constexpr int64_t kColAlign = 64;   // output-channel chunks: multiples of 64 (whole packed words)

int64_t RoundUp(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

int32_t Popcount(uint32_t v) { return __builtin_popcount(v); }

// Per-thread scratch, grown on demand and reused across calls.
struct Scratch {
  std::vector<uint32_t> a;     // im2col block: rows x taps * words
  std::vector<int32_t> tile;   // popcounts: rows x chunk
  std::vector<int32_t> corr;   // padding correction of one row: chunk
};
Scratch& ThreadScratch() {
  thread_local Scratch scratch;
  return scratch;
}

}  // namespace

void RunXnorConv(const ConvProblem& p, XnorImpl impl, XnorOutput output, const uint32_t* x,
                 const uint32_t* w, const float* scale, const float* bias, void* out,
                 int64_t num_threads, const ParallelFor& parallel_for) {
  const int64_t taps = p.kernel_h * p.kernel_w;
  const int64_t words = p.words;
  const int64_t kw = taps * words;            // words per receptive field
  const int64_t bits = taps * p.channels;     // +-1 products per output (padding included)
  const int64_t out_c = p.out_channels;
  const int64_t ldb = RoundUp(out_c, kLaneGroup);
  const int64_t pixels = p.out_h * p.out_w;
  const int64_t rows = p.batch * pixels;
  const uint32_t last_mask = g::TailMask(p.channels, words - 1);
  // Padded taps are gathered as the +-1 value `assumed_pad`; zero padding (not representable in
  // bits) is gathered as -1 and fixed by the per-border-position correction.
  const int64_t assumed_pad = p.pad_value != 0 ? p.pad_value : -1;
  const bool any_padding = p.pad_top > 0 || p.pad_bottom > 0 || p.pad_left > 0 || p.pad_right > 0;
  const bool correct = any_padding && p.pad_value != assumed_pad;

  // Weights transposed to [K words][ldb] with tail bits masked and zero columns past O; for the
  // correction, the sum of the +-1 weights of every (tap, output channel).
  std::vector<uint32_t> bt(static_cast<size_t>(kw * ldb), 0u);
  std::vector<int32_t> tap_sums(correct ? static_cast<size_t>(taps * ldb) : 0, 0);
  for (int64_t o = 0; o < out_c; ++o) {
    const uint32_t* src = w + o * kw;
    for (int64_t t = 0; t < taps; ++t) {
      int64_t ones = 0;
      for (int64_t j = 0; j < words; ++j) {
        uint32_t word = src[t * words + j];
        if (j == words - 1) word &= last_mask;
        bt[(t * words + j) * ldb + o] = word;
        ones += Popcount(word);
      }
      if (correct) tap_sums[t * ldb + o] = static_cast<int32_t>(g::SumFromPopcount(p.channels, ones));
    }
  }
  std::vector<uint32_t> pad_words(words);
  for (int64_t j = 0; j < words; ++j) pad_words[j] = g::ConstantWord(assumed_pad, p.channels, j);

  // Work items: blocks of output pixels x chunks of output channels (more chunks when there are
  // few pixel blocks, so that every thread has work even for batch 1 on a 2x2 map).
  const int64_t row_blocks = (rows + kRowBlock - 1) / kRowBlock;
  int64_t chunk = RoundUp(ldb, kColAlign);
  const int64_t want_items = 4 * std::max<int64_t>(num_threads, 1);
  if (row_blocks < want_items) {
    const int64_t splits = (want_items + row_blocks - 1) / row_blocks;
    chunk = std::max(kColAlign, RoundUp((ldb + splits - 1) / splits, kColAlign));
  }
  const int64_t col_chunks = (ldb + chunk - 1) / chunk;
  const GemmFn gemm = GemmFor(impl);
  const int64_t packed_out_words = g::PackedWords(out_c);

  parallel_for(row_blocks * col_chunks, [&](int64_t item) {
    const int64_t m0 = (item / col_chunks) * kRowBlock;
    const int64_t m1 = std::min(rows, m0 + kRowBlock);
    const int64_t c0 = (item % col_chunks) * chunk;
    const int64_t c1 = std::min(ldb, c0 + chunk);
    const int64_t o_end = std::min(out_c, c1);
    const int64_t n_rows = m1 - m0;
    Scratch& s = ThreadScratch();
    if (s.a.size() < static_cast<size_t>(kRowBlock * kw)) s.a.resize(kRowBlock * kw);
    if (s.tile.size() < static_cast<size_t>(kRowBlock * chunk)) s.tile.resize(kRowBlock * chunk);
    if (s.corr.size() < static_cast<size_t>(chunk)) s.corr.resize(chunk);

    // Gather the receptive fields (packed im2col), padding as `assumed_pad`, tails masked.
    for (int64_t r = 0; r < n_rows; ++r) {
      const int64_t m = m0 + r;
      const int64_t n = m / pixels;
      const int64_t oh = (m % pixels) / p.out_w;
      const int64_t ow = m % p.out_w;
      uint32_t* dst = s.a.data() + r * kw;
      for (int64_t kh = 0; kh < p.kernel_h; ++kh) {
        const int64_t ih = g::TapInputIndex(oh, kh, p.stride_h, p.pad_top);
        const bool row_inside = g::TapInside(ih, p.height);
        for (int64_t kx = 0; kx < p.kernel_w; ++kx, dst += words) {
          const int64_t iw = g::TapInputIndex(ow, kx, p.stride_w, p.pad_left);
          if (row_inside && g::TapInside(iw, p.width)) {
            std::memcpy(dst, x + ((n * p.height + ih) * p.width + iw) * words,
                        sizeof(uint32_t) * words);
            dst[words - 1] &= last_mask;
          } else {
            std::memcpy(dst, pad_words.data(), sizeof(uint32_t) * words);
          }
        }
      }
    }

    gemm(s.a.data(), kw, n_rows, bt.data() + c0, ldb, c1 - c0, kw, s.tile.data(), chunk);

    // Epilogue: dot = bits - 2 * popcount (+ the padding correction), then the output form.
    for (int64_t r = 0; r < n_rows; ++r) {
      const int64_t m = m0 + r;
      const int32_t* pc = s.tile.data() + r * chunk;
      int32_t* corr = s.corr.data();
      const int64_t width = o_end - c0;
      std::fill(corr, corr + width, 0);
      if (correct) {
        const int64_t oh = (m % pixels) / p.out_w;
        const int64_t ow = m % p.out_w;
        const int64_t h0 = g::InsideTapBegin(oh, p.stride_h, p.pad_top);
        const int64_t h1 = g::InsideTapEnd(oh, p.stride_h, p.pad_top, p.height, p.kernel_h);
        const int64_t w0 = g::InsideTapBegin(ow, p.stride_w, p.pad_left);
        const int64_t w1 = g::InsideTapEnd(ow, p.stride_w, p.pad_left, p.width, p.kernel_w);
        if (!(h0 == 0 && h1 == p.kernel_h && w0 == 0 && w1 == p.kernel_w)) {
          for (int64_t kh = 0; kh < p.kernel_h; ++kh) {
            for (int64_t kx = 0; kx < p.kernel_w; ++kx) {
              if (kh >= h0 && kh < h1 && kx >= w0 && kx < w1) continue;
              const int32_t* sums = tap_sums.data() + (kh * p.kernel_w + kx) * ldb + c0;
              for (int64_t o = 0; o < width; ++o) corr[o] += sums[o];
            }
          }
          for (int64_t o = 0; o < width; ++o) {
            corr[o] = static_cast<int32_t>(g::PadCorrection(p.pad_value, assumed_pad, corr[o]));
          }
        }
      }
      const int32_t base = static_cast<int32_t>(bits);
      switch (output) {
        case XnorOutput::kInt32: {
          int32_t* dst = static_cast<int32_t*>(out) + m * out_c + c0;
          for (int64_t o = 0; o < width; ++o) dst[o] = base - 2 * pc[o] + corr[o];
          break;
        }
        case XnorOutput::kFloat32: {
          float* dst = static_cast<float*>(out) + m * out_c + c0;
          for (int64_t o = 0; o < width; ++o) {
            const double dot = static_cast<double>(base - 2 * pc[o] + corr[o]);
            dst[o] = static_cast<float>(dot * scale[c0 + o] + bias[c0 + o]);
          }
          break;
        }
        case XnorOutput::kPacked: {
          uint32_t* dst = static_cast<uint32_t*>(out) + m * packed_out_words;
          for (int64_t j = g::WordOfChannel(c0); j * g::kWordBits < o_end; ++j) {
            uint32_t word = 0;
            const int64_t first = j * g::kWordBits;
            const int64_t last = std::min(o_end, first + g::kWordBits);
            for (int64_t o = first; o < last; ++o) {
              const double dot = static_cast<double>(base - 2 * pc[o - c0] + corr[o - c0]);
              const float y = static_cast<float>(dot * scale[o] + bias[o]);
              word |= static_cast<uint32_t>(y >= 0.0f) << g::BitOfChannel(o);
            }
            dst[j] = word;
          }
          break;
        }
      }
    }
  });
}

}  // namespace xnorjax
