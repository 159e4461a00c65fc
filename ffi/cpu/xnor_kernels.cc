// The CPU engine of the packed XNOR-popcount conv / dense targets: validation, CPU dispatch,
// weight transpose, per-block im2col on packed words, the microkernel call and the fused epilogue.
#include "cpu/xnor_kernels.h"

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
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

using ColumnPopcountFn = void (*)(const uint32_t*, int64_t, uint32_t, int32_t*);

ColumnPopcountFn ColumnPopcountsFor(XnorImpl impl) {
  switch (impl) {
    case XnorImpl::kAvx512: return AddColumnPopcountsAvx512;
    case XnorImpl::kAvx2: return AddColumnPopcountsAvx2;
    default: return AddColumnPopcountsPortable;
  }
}

// [O][K] -> [K][O], in 16 x 16 tiles (cache-friendly both ways).
void TransposeWeights(const uint32_t* w, int64_t out_c, int64_t kw, uint32_t* bt) {
  constexpr int64_t kTile = 16;
  for (int64_t o0 = 0; o0 < out_c; o0 += kTile) {
    const int64_t o1 = std::min(out_c, o0 + kTile);
    for (int64_t k0 = 0; k0 < kw; k0 += kTile) {
      const int64_t k1 = std::min(kw, k0 + kTile);
      for (int64_t o = o0; o < o1; ++o) {
        for (int64_t k = k0; k < k1; ++k) bt[k * out_c + o] = w[o * kw + k];
      }
    }
  }
}

constexpr int64_t kRowBlock = 48;   // output pixels per work item (a multiple of 6 and 2)
// Below about this many vector XOR-popcount steps per thread, extra threads do not pay off.
constexpr int64_t kMinWorkPerThread = 64 * 1024;
constexpr int64_t kColAlign = 64;   // output-channel chunks: multiples of 64 (whole packed words)

int64_t RoundUp(int64_t v, int64_t m) { return (v + m - 1) / m * m; }


// Per-thread scratch, grown on demand and reused across calls.
struct Scratch {
  std::vector<uint32_t> a;     // im2col block: rows x taps * words
  std::vector<int32_t> tile;   // popcounts: rows x chunk
};
Scratch& ThreadScratch() {
  thread_local Scratch scratch;
  return scratch;
}

}  // namespace

namespace {

// Everything one work item needs, computed once per call.
struct Plan {
  ConvProblem p;
  XnorOutput output;
  GemmFn gemm;
  void (*epilogue)(const EpilogueArgs&);
  const uint32_t* x;
  const uint32_t* bt;        // weights [K words][O]
  const float* scale;
  const float* bias;
  void* out;
  int64_t taps, words, kw, bits, out_c, pixels, rows;
  uint32_t last_mask;
  bool mask_tails;
  const int32_t* garbage;    // [O] weight tail bits per output channel (mask_tails only)
  const uint32_t* pad_words; // [words] the gathered value of a padded tap
  // Zero-padding correction per border class: row_class[oh], col_class[ow] index the distinct
  // inside-tap ranges; class_corr[(rc * col_classes + cc) * O + o]; nullptr for interior rows.
  const int32_t* class_corr;
  const int32_t* row_class;
  const int32_t* col_class;
  int64_t col_classes;
  int64_t chunk, col_chunks;
};

// dst[0, n) = src[0, n) for the few words of a receptive-field row: 16-byte moves, never a call
// to memcpy or a `rep movs` (whose start-up costs more than these copies).
__attribute__((optimize("no-tree-loop-distribute-patterns"))) inline void CopyWords(
    uint32_t* __restrict dst, const uint32_t* __restrict src, int64_t n) {
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) __builtin_memcpy(dst + i, src + i, 16);
  for (; i < n; ++i) dst[i] = src[i];
}

// Packed im2col of rows [m0, m0 + n_rows) into a (n_rows x kw words), padding as the plan's pad
// words, tails masked. The KW taps of one kernel row read KW adjacent input pixels: one
// contiguous copy when all are inside.
void Gather(const Plan& pl, int64_t m0, int64_t n_rows, uint32_t* __restrict a) {
  const ConvProblem& p = pl.p;
  const int64_t words = pl.words, kw = pl.kw, pixels = pl.pixels;
  const int64_t row_words = p.kernel_w * words;
  const uint32_t* __restrict x = pl.x;
  const uint32_t* __restrict pad = pl.pad_words;
  const uint32_t last_mask = pl.last_mask;
  int64_t n = m0 / pixels, oh = (m0 % pixels) / p.out_w, ow = m0 % p.out_w;
  for (int64_t r = 0; r < n_rows; ++r, ++ow) {
    if (ow == p.out_w) {  // next output row (and image): no divisions per pixel
      ow = 0;
      if (++oh == p.out_h) oh = 0, ++n;
    }
    const int64_t iw0 = g::TapInputIndex(ow, 0, p.stride_w, p.pad_left);
    const bool cols_inside = iw0 >= 0 && iw0 + p.kernel_w <= p.width;
    uint32_t* __restrict dst = a + r * kw;
    for (int64_t kh = 0; kh < p.kernel_h; ++kh, dst += row_words) {
      const int64_t ih = g::TapInputIndex(oh, kh, p.stride_h, p.pad_top);
      const bool row_inside = g::TapInside(ih, p.height);
      const int64_t base = ((n * p.height + ih) * p.width + iw0) * words;  // used only inside
      if (row_inside && cols_inside) {
        CopyWords(dst, x + base, row_words);
      } else {
        for (int64_t kx = 0; kx < p.kernel_w; ++kx) {
          const bool inside = row_inside && g::TapInside(iw0 + kx, p.width);
          CopyWords(dst + kx * words, inside ? x + base + kx * words : pad, words);
        }
      }
      if (pl.mask_tails) {
        for (int64_t kx = 0; kx < p.kernel_w; ++kx) dst[kx * words + words - 1] &= last_mask;
      }
    }
  }
}

// Epilogue of one row: dot = bits - 2 * (popcount - weight tail bits) + padding correction,
// written as int32, float32 (dot * scale + bias) or packed bits of that (>= 0).
void Epilogue(const Plan& pl, int64_t m, int64_t oh, int64_t ow, int64_t c0, int64_t c1,
              const int32_t* pc) {
  EpilogueArgs e;
  e.pc = pc;
  e.garbage = pl.mask_tails ? pl.garbage + c0 : nullptr;
  e.corr = nullptr;
  if (pl.class_corr != nullptr) {
    const int64_t cls = pl.row_class[oh] * pl.col_classes + pl.col_class[ow];
    e.corr = pl.class_corr + cls * pl.out_c + c0;
  }
  e.base = static_cast<int32_t>(pl.bits);
  e.n = c1 - c0;
  e.output = pl.output;
  e.scale = pl.scale == nullptr ? nullptr : pl.scale + c0;
  e.bias = pl.bias == nullptr ? nullptr : pl.bias + c0;
  switch (pl.output) {
    case XnorOutput::kInt32: e.out = static_cast<int32_t*>(pl.out) + m * pl.out_c + c0; break;
    case XnorOutput::kFloat32: e.out = static_cast<float*>(pl.out) + m * pl.out_c + c0; break;
    case XnorOutput::kPacked:
      e.out = static_cast<uint32_t*>(pl.out) + m * g::PackedWords(pl.out_c) + g::WordOfChannel(c0);
      break;
  }
  pl.epilogue(e);
}

void RunItem(const Plan& pl, int64_t item) {
  const int64_t m0 = (item / pl.col_chunks) * kRowBlock;
  const int64_t n_rows = std::min(pl.rows, m0 + kRowBlock) - m0;
  const int64_t c0 = (item % pl.col_chunks) * pl.chunk;
  const int64_t c1 = std::min(pl.out_c, c0 + pl.chunk);
  Scratch& s = ThreadScratch();
  if (s.a.size() < static_cast<size_t>(kRowBlock * pl.kw)) s.a.resize(kRowBlock * pl.kw);
  if (s.tile.size() < static_cast<size_t>(kRowBlock * pl.chunk)) {
    s.tile.resize(kRowBlock * pl.chunk);
  }
  Gather(pl, m0, n_rows, s.a.data());
  pl.gemm(s.a.data(), pl.kw, n_rows, pl.bt + c0, pl.out_c, c1 - c0, pl.kw, s.tile.data(),
          pl.chunk);
  int64_t oh = (m0 % pl.pixels) / pl.p.out_w, ow = m0 % pl.p.out_w;
  for (int64_t r = 0; r < n_rows; ++r, ++ow) {
    if (ow == pl.p.out_w) {
      ow = 0;
      if (++oh == pl.p.out_h) oh = 0;
    }
    Epilogue(pl, m0 + r, oh, ow, c0, c1, s.tile.data() + r * pl.chunk);
  }
}

// Distinct inside-tap ranges [begin, end) along one axis: the class (index into `ranges`) of
// every output position. Interior positions share the range [0, kernel), whose correction is 0.
void AxisClasses(int64_t out, int64_t stride, int64_t pad_lo, int64_t in, int64_t kernel,
                 std::vector<int32_t>* cls, std::vector<std::pair<int64_t, int64_t>>* ranges) {
  cls->resize(out);
  for (int64_t i = 0; i < out; ++i) {
    const std::pair<int64_t, int64_t> range(g::InsideTapBegin(i, stride, pad_lo),
                                            g::InsideTapEnd(i, stride, pad_lo, in, kernel));
    auto it = std::find(ranges->begin(), ranges->end(), range);
    (*cls)[i] = static_cast<int32_t>(it - ranges->begin());
    if (it == ranges->end()) ranges->push_back(range);
  }
}

}  // namespace

void RunXnorConv(const ConvProblem& p, WeightLayout layout, XnorImpl impl, XnorOutput output,
                 const uint32_t* x, const uint32_t* w, const float* scale, const float* bias,
                 void* out, int64_t num_threads, const ParallelFor& parallel_for) {
  Plan pl;
  pl.p = p;
  pl.output = output;
  pl.gemm = GemmFor(impl);
  pl.epilogue = impl == XnorImpl::kAvx512 ? EpilogueRowAvx512
                : impl == XnorImpl::kAvx2 ? EpilogueRowAvx2
                                          : EpilogueRowPortable;
  pl.x = x;
  pl.scale = scale;
  pl.bias = bias;
  pl.out = out;
  pl.taps = p.kernel_h * p.kernel_w;
  pl.words = p.words;
  pl.kw = pl.taps * p.words;          // words per receptive field
  pl.bits = pl.taps * p.channels;     // +-1 products per output (padding included)
  pl.out_c = p.out_channels;
  pl.pixels = p.out_h * p.out_w;
  pl.rows = p.batch * pl.pixels;
  pl.last_mask = g::TailMask(p.channels, p.words - 1);
  pl.mask_tails = pl.last_mask != 0xFFFFFFFFu;
  const int64_t taps = pl.taps, words = pl.words, out_c = pl.out_c;
  // Padded taps are gathered as the +-1 value `assumed_pad`; zero padding (not representable in
  // bits) is gathered as -1 and fixed by the per-border-position correction.
  const int64_t assumed_pad = p.pad_value != 0 ? p.pad_value : -1;
  const bool any_padding = p.pad_top > 0 || p.pad_bottom > 0 || p.pad_left > 0 || p.pad_right > 0;
  const bool correct = any_padding && p.pad_value != assumed_pad;
  const ColumnPopcountFn column_popcounts = ColumnPopcountsFor(impl);

  // The microkernels read the weights as bt[k * out_c + o] ([K words][O]): the input-major layout
  // is that already; the output-major one (the FFI contract's) is transposed here.
  std::unique_ptr<uint32_t[]> transposed;
  pl.bt = w;
  if (layout == WeightLayout::kOutputMajor) {
    transposed.reset(new uint32_t[pl.kw * out_c]);
    TransposeWeights(w, out_c, pl.kw, transposed.get());
    pl.bt = transposed.get();
  }
  // Tail bits of the weights are not masked in place; the gathered inputs' tails are zero, so
  // each weight tail bit adds 1 to the XOR popcount: `garbage` takes those counts back out.
  std::vector<int32_t> garbage(pl.mask_tails ? out_c : 0, 0);
  if (pl.mask_tails) {
    for (int64_t t = 0; t < taps; ++t) {
      column_popcounts(pl.bt + (t * words + words - 1) * out_c, out_c, ~pl.last_mask,
                       garbage.data());
    }
  }
  pl.garbage = garbage.data();
  std::vector<uint32_t> pad_words(words);
  for (int64_t j = 0; j < words; ++j) pad_words[j] = g::ConstantWord(assumed_pad, p.channels, j);
  pl.pad_words = pad_words.data();

  // Zero padding: the correction of each border class (a distinct pair of inside-tap ranges),
  // from the sum of the +-1 weights of every (tap, output channel).
  std::vector<int32_t> row_class, col_class, class_corr;
  pl.class_corr = nullptr;
  if (correct) {
    std::vector<int32_t> tap_sums(taps * out_c, 0);
    for (int64_t t = 0; t < taps; ++t) {
      int32_t* sums = tap_sums.data() + t * out_c;
      for (int64_t j = 0; j < words; ++j) {
        column_popcounts(pl.bt + (t * words + j) * out_c, out_c,
                         j == words - 1 ? pl.last_mask : 0xFFFFFFFFu, sums);
      }
      for (int64_t o = 0; o < out_c; ++o) {
        sums[o] = static_cast<int32_t>(g::SumFromPopcount(p.channels, sums[o]));
      }
    }
    std::vector<std::pair<int64_t, int64_t>> row_ranges, col_ranges;
    AxisClasses(p.out_h, p.stride_h, p.pad_top, p.height, p.kernel_h, &row_class, &row_ranges);
    AxisClasses(p.out_w, p.stride_w, p.pad_left, p.width, p.kernel_w, &col_class, &col_ranges);
    const int64_t classes = static_cast<int64_t>(row_ranges.size() * col_ranges.size());
    class_corr.assign(classes * out_c, 0);
    for (size_t rc = 0; rc < row_ranges.size(); ++rc) {
      for (size_t cc = 0; cc < col_ranges.size(); ++cc) {
        int32_t* corr = class_corr.data() + (rc * col_ranges.size() + cc) * out_c;
        const auto [h0, h1] = row_ranges[rc];
        const auto [w0, w1] = col_ranges[cc];
        for (int64_t kh = 0; kh < p.kernel_h; ++kh) {
          for (int64_t kx = 0; kx < p.kernel_w; ++kx) {
            if (kh >= h0 && kh < h1 && kx >= w0 && kx < w1) continue;  // inside: no correction
            const int32_t* sums = tap_sums.data() + (kh * p.kernel_w + kx) * out_c;
            for (int64_t o = 0; o < out_c; ++o) corr[o] += sums[o];
          }
        }
        for (int64_t o = 0; o < out_c; ++o) {
          corr[o] = static_cast<int32_t>(g::PadCorrection(p.pad_value, assumed_pad, corr[o]));
        }
      }
    }
    pl.class_corr = class_corr.data();
    pl.row_class = row_class.data();
    pl.col_class = col_class.data();
    pl.col_classes = static_cast<int64_t>(col_ranges.size());
  }

  // Work items: blocks of output pixels x chunks of output channels (more chunks when there are
  // few pixel blocks, so that every thread has work even for batch 1 on a 2x2 map). Chunks are
  // multiples of 64 channels, so packed output words never straddle two items. Small problems
  // run on fewer threads (waking a thread costs more than it saves).
  const int64_t row_blocks = (pl.rows + kRowBlock - 1) / kRowBlock;
  const int64_t lane_work = pl.rows * RoundUp(out_c, kColAlign) * pl.kw / 16;  // vector XORs
  const int64_t threads = std::clamp<int64_t>(lane_work / kMinWorkPerThread, 1,
                                              std::max<int64_t>(num_threads, 1));
  pl.chunk = RoundUp(out_c, kColAlign);
  const int64_t want_items = 4 * threads;
  if (threads > 1 && row_blocks < want_items) {
    const int64_t splits = (want_items + row_blocks - 1) / row_blocks;
    pl.chunk = std::max(kColAlign, RoundUp((out_c + splits - 1) / splits, kColAlign));
  }
  pl.col_chunks = (out_c + pl.chunk - 1) / pl.chunk;
  parallel_for(row_blocks * pl.col_chunks, threads,
               [&pl](int64_t item) { RunItem(pl, item); });
}

}  // namespace xnorjax
