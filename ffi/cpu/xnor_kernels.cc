// The CPU engine of the packed XNOR-popcount conv / dense targets: validation, CPU dispatch,
// weight transpose, the padded input copy read in place, the microkernel call and the epilogue.
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

using GemmFn = void (*)(const RowSource&, int64_t, const uint32_t*, int64_t, int64_t, int32_t*,
                        int64_t);
using FusedGemmFn = void (*)(const RowSource&, int64_t, const uint32_t*, int64_t, int64_t,
                             const EpilogueArgs*);

GemmFn GemmFor(XnorImpl impl) {
  switch (impl) {
    case XnorImpl::kAvx512: return PopcountGemmAvx512;
    case XnorImpl::kAvx2: return PopcountGemmAvx2;
    default: return PopcountGemmPortable;
  }
}

using ColumnPopcountFn = void (*)(const uint32_t*, int64_t, int64_t, int64_t, uint32_t, int32_t*);

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
// Below about this many vector XOR-popcount steps per thread, extra threads do not pay off (a
// spinning pool worker joins within a microsecond or so; a sleeping one takes tens).
constexpr int64_t kMinWorkPerThread = 8 * 1024;
constexpr int64_t kColAlign = 64;   // output-channel chunks: multiples of 64 (whole packed words)

int64_t RoundUp(int64_t v, int64_t m) { return (v + m - 1) / m * m; }


// Per-thread scratch, grown on demand and reused across calls.
struct Scratch {
  std::vector<const uint32_t*> rows;  // the work item's row pointers into the padded input
  std::vector<EpilogueArgs> epilogues;  // and each row's epilogue
  std::vector<int32_t> tile;          // popcounts: rows x chunk
};
Scratch& ThreadScratch() {
  thread_local Scratch scratch;
  return scratch;
}

// The padded copy of the input, owned by the calling thread (reused across calls).
std::vector<uint32_t>& PaddedInputBuffer() {
  thread_local std::vector<uint32_t> buffer;
  return buffer;
}

}  // namespace

namespace {

// Everything one work item needs, computed once per call.
struct Plan {
  ConvProblem p;
  XnorOutput output;
  GemmFn gemm;
  FusedGemmFn fused_gemm;  // the microkernel with the epilogue fused in, where there is one
  void (*epilogue)(const EpilogueArgs&);
  // The input as the microkernels read it: u32[N, src_h, src_w, words], input pixel (ih, iw) at
  // (ih + src_top, iw + src_left); every tap of every output pixel lies inside it.
  const uint32_t* src;
  int64_t src_h, src_w, src_top, src_left;
  const int64_t* seg_offset;  // [KH] offset of kernel row kh from an output pixel's first tap
  const uint32_t* bt;        // weights [K words][O]
  const float* scale;
  const float* bias;
  void* out;
  int64_t taps, words, kw, bits, out_c, pixels, rows;
  uint32_t last_mask;
  bool mask_tails;
  const int32_t* garbage;    // [O] weight tail bits per output channel (mask_tails only)
  // Zero-padding correction per border class: row_class[oh], col_class[ow] index the distinct
  // inside-tap ranges; class_corr[(rc * col_classes + cc) * O + o]; nullptr for interior rows.
  const int32_t* class_corr;
  const int32_t* row_class;
  const int32_t* col_class;
  int64_t col_classes;
  int64_t chunk, col_chunks;
};

// Copies x into the padded buffer `dst` (the plan's src geometry): taps outside the input hold
// `pad` (one +-1 word per packed word), and the tail bits of every pixel's last word are cleared.
void PadInput(const Plan& pl, const uint32_t* __restrict x, const uint32_t* __restrict pad,
              uint32_t* __restrict dst) {
  const ConvProblem& p = pl.p;
  const int64_t words = pl.words;
  const int64_t row_words = pl.src_w * words;
  // Source columns [c0, c1) hold input columns [c0 - src_left, c1 - src_left).
  const int64_t c0 = std::clamp<int64_t>(pl.src_left, 0, pl.src_w);
  const int64_t c1 = std::clamp<int64_t>(pl.src_left + p.width, c0, pl.src_w);
  auto fill_pad = [&](uint32_t* out, int64_t pixels) {
    for (int64_t i = 0; i < pixels; ++i) std::memcpy(out + i * words, pad, words * 4);
  };
  for (int64_t n = 0; n < p.batch; ++n) {
    for (int64_t r = 0; r < pl.src_h; ++r) {
      uint32_t* out = dst + (n * pl.src_h + r) * row_words;
      const int64_t ih = r - pl.src_top;
      if (!g::TapInside(ih, p.height)) {
        fill_pad(out, pl.src_w);
        continue;
      }
      fill_pad(out, c0);
      std::memcpy(out + c0 * words,
                  x + ((n * p.height + ih) * p.width + (c0 - pl.src_left)) * words,
                  (c1 - c0) * words * 4);
      if (pl.mask_tails) {
        for (int64_t c = c0; c < c1; ++c) out[c * words + words - 1] &= pl.last_mask;
      }
      fill_pad(out + c1 * words, pl.src_w - c1);
    }
  }
}

// Epilogue of one row: dot = bits - 2 * (popcount - weight tail bits) + padding correction,
// written as int32, float32 (dot * scale + bias) or packed bits of that (>= 0).
EpilogueArgs RowEpilogue(const Plan& pl, int64_t m, int64_t oh, int64_t ow, int64_t c0,
                         int64_t c1, const int32_t* pc) {
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
  return e;
}

void RunItem(const Plan& pl, int64_t item) {
  const int64_t m0 = (item / pl.col_chunks) * kRowBlock;
  const int64_t n_rows = std::min(pl.rows, m0 + kRowBlock) - m0;
  const int64_t c0 = (item % pl.col_chunks) * pl.chunk;
  const int64_t c1 = std::min(pl.out_c, c0 + pl.chunk);
  Scratch& s = ThreadScratch();
  if (s.rows.size() < static_cast<size_t>(kRowBlock)) {
    s.rows.resize(kRowBlock);
    s.epilogues.resize(kRowBlock);
  }
  const bool fused = pl.fused_gemm != nullptr;
  if (!fused && s.tile.size() < static_cast<size_t>(kRowBlock * pl.chunk)) {
    s.tile.resize(kRowBlock * pl.chunk);
  }
  // Per output pixel: its first tap in the padded input and its epilogue (no divisions).
  const ConvProblem& p = pl.p;
  int64_t n = m0 / pl.pixels, oh = (m0 % pl.pixels) / p.out_w, ow = m0 % p.out_w;
  for (int64_t r = 0; r < n_rows; ++r, ++ow) {
    if (ow == p.out_w) {
      ow = 0;
      if (++oh == p.out_h) oh = 0, ++n;
    }
    const int64_t ih = g::TapInputIndex(oh, 0, p.stride_h, p.pad_top) + pl.src_top;
    const int64_t iw = g::TapInputIndex(ow, 0, p.stride_w, p.pad_left) + pl.src_left;
    s.rows[r] = pl.src + ((n * pl.src_h + ih) * pl.src_w + iw) * pl.words;
    s.epilogues[r] = RowEpilogue(pl, m0 + r, oh, ow, c0, c1,
                                 fused ? nullptr : s.tile.data() + r * pl.chunk);
  }
  const RowSource a{s.rows.data(), pl.seg_offset, p.kernel_h, p.kernel_w * pl.words};
  if (fused) {
    pl.fused_gemm(a, n_rows, pl.bt + c0, pl.out_c, c1 - c0, s.epilogues.data());
    return;
  }
  pl.gemm(a, n_rows, pl.bt + c0, pl.out_c, c1 - c0, s.tile.data(), pl.chunk);
  for (int64_t r = 0; r < n_rows; ++r) pl.epilogue(s.epilogues[r]);
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
  pl.fused_gemm = impl == XnorImpl::kAvx512 ? PopcountGemmEpilogueAvx512 : nullptr;
  // The row epilogue after a tile of popcounts (AVX2, portable; AVX-512 fuses it in registers).
  pl.epilogue = impl == XnorImpl::kAvx2 ? EpilogueRowAvx2 : EpilogueRowPortable;
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
  // Padded taps are read as the +-1 value `assumed_pad`; zero padding (not representable in
  // bits) is read as -1 and fixed by the per-border-position correction.
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
  // Tail bits of the weights are not masked in place; the padded copy clears the inputs' tails, so
  // each weight tail bit adds 1 to the XOR popcount: `garbage` takes those counts back out.
  std::vector<int32_t> garbage(pl.mask_tails ? out_c : 0, 0);
  if (pl.mask_tails) {
    for (int64_t t = 0; t < taps; ++t) {
      column_popcounts(pl.bt + (t * words + words - 1) * out_c, 1, out_c, out_c, ~pl.last_mask,
                       garbage.data());
    }
  }
  pl.garbage = garbage.data();
  // The input read in place: x itself when no tap is padded and no tail bits need clearing,
  // else a padded copy covering exactly the rows and columns that the taps read.
  std::vector<uint32_t> pad_words(words);
  for (int64_t j = 0; j < words; ++j) pad_words[j] = g::ConstantWord(assumed_pad, p.channels, j);
  if (!any_padding && !pl.mask_tails) {
    pl.src = x;
    pl.src_h = p.height;
    pl.src_w = p.width;
    pl.src_top = pl.src_left = 0;
  } else {
    pl.src_h = (p.out_h - 1) * p.stride_h + p.kernel_h;
    pl.src_w = (p.out_w - 1) * p.stride_w + p.kernel_w;
    pl.src_top = p.pad_top;
    pl.src_left = p.pad_left;
    std::vector<uint32_t>& padded = PaddedInputBuffer();
    padded.resize(p.batch * pl.src_h * pl.src_w * words);
    PadInput(pl, x, pad_words.data(), padded.data());
    pl.src = padded.data();
  }
  std::vector<int64_t> seg_offset(p.kernel_h);
  for (int64_t kh = 0; kh < p.kernel_h; ++kh) seg_offset[kh] = kh * pl.src_w * words;
  pl.seg_offset = seg_offset.data();

  // Zero padding: the correction of each border class (a distinct pair of inside-tap ranges),
  // from the sum of the +-1 weights of every (tap, output channel).
  std::vector<int32_t> row_class, col_class, class_corr;
  pl.class_corr = nullptr;
  if (correct) {
    std::vector<int32_t> tap_sums(taps * out_c, 0);
    for (int64_t t = 0; t < taps; ++t) {
      int32_t* sums = tap_sums.data() + t * out_c;
      column_popcounts(pl.bt + t * words * out_c, words, out_c, out_c, pl.last_mask, sums);
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
  // run on fewer threads (starting a thread costs more than it saves).
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
