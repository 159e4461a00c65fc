// Index arithmetic of the CUDA XNOR-popcount kernels (ffi/cuda/xnor_conv.cu), shared with their
// host emulation (ffi/cuda/host_emulation.cc, the module xnorjax._cuda_host) so that CPU tests
// exercise the exact tiling, gather, swizzle, fragment and epilogue code the GPU runs.
//
// The kernels compute a packed convolution as an implicit GEMM:
//   rows    m = (n, oh, ow)                      M = N * OH * OW output pixels
//   columns o                                     O output channels
//   K       j = (kh * KW + kw) * Cw + word        Kw = KH * KW * Cw words
// The weights are either output-major, w u32[O, KH, KW, Cw] (the FFI contract: word (o, j) at
// o * Kw + j), or input-major, the public packed layout u32[KH, KW, Cw, O] (targets "..._hwio" /
// "..._kn": word (o, j) at j * O + o), read as they are, with no transpose per call.
// A dense layer is the same problem on 1x1 maps with a 1x1 kernel (ValidateDense).
//
// Tail bits past C in the last word of each pixel / tap should be 0 (the contract), but like the
// CPU kernels these ignore whatever they hold: the popcounts mask them, the simple path masks the
// XOR, and the tensor-core path zeroes the weights' tails in shared memory (MaskSlabTails), so the
// AND with the input's tails is 0.
//
// Bit 1 = +1. The tensor-core path multiplies with `mma ... .and.popc` (the form native on sm_80
// and sm_90), so it gathers A with every padded tap read as the all -1 word (0, which popcounts
// to nothing), and the epilogue assembles
//   dot = DotFromAndPopcount(C * KH * KW, popc(a), popc(w[o]), acc)          (pad -1 assumed)
//       + PadCorrection(pad_value, -1, sum of the +-1 weights of the taps outside the image),
// with popc(a) from a pre-pass over the input (per-pixel popcounts) and the weight sums from a
// per-channel 2-D prefix table over the taps (the inside taps of any output form a rectangle).
#pragma once

#include <cmath>
#include <cstdint>

#include "conv_geometry.h"

namespace xnorjax {
namespace cuda {

// A validated packed-convolution problem (see ValidateConv in ffi/cuda/xnor_shape.h).
struct ConvShape {
  int64_t batch = 0, in_h = 0, in_w = 0, in_words = 0, channels = 0;
  int64_t out_channels = 0, kernel_h = 0, kernel_w = 0;
  int64_t stride_h = 1, stride_w = 1, pad_top = 0, pad_left = 0, pad_value = 0;
  int64_t out_h = 0, out_w = 0;
  bool w_input_major = false;  // weights [KH, KW, Cw, O] rather than [O, KH, KW, Cw]
};

// The result of a packed kernel: exact dot products, the float epilogue, or its packed signs.
enum class OutputKind : int { kInt32 = 0, kFloat32 = 1, kPacked = 2 };

XNORJAX_HOST_DEVICE inline int Popcount(uint32_t v) {
#if defined(__CUDA_ARCH__)
  return __popc(v);
#else
  return __builtin_popcount(v);
#endif
}

// GEMM sizes of the implicit GEMM.
XNORJAX_HOST_DEVICE inline int64_t GemmRows(const ConvShape& s) {
  return s.batch * s.out_h * s.out_w;
}
XNORJAX_HOST_DEVICE inline int64_t GemmKWords(const ConvShape& s) {
  return s.kernel_h * s.kernel_w * s.in_words;
}
XNORJAX_HOST_DEVICE inline int64_t KernelTaps(const ConvShape& s) {
  return s.kernel_h * s.kernel_w;
}
// Number of +-1 products of one output when every tap counts (padding -1 or +1).
XNORJAX_HOST_DEVICE inline int64_t FullKernelBits(const ConvShape& s) {
  return s.channels * KernelTaps(s);
}
XNORJAX_HOST_DEVICE inline int64_t OutputWords(const ConvShape& s) {
  return geometry::PackedWords(s.out_channels);
}

// Word offset of weight word j (K index) of output channel o, in either weight layout.
XNORJAX_HOST_DEVICE inline int64_t WeightOffset(const ConvShape& s, int64_t o, int64_t j) {
  return s.w_input_major ? j * s.out_channels + o : o * GemmKWords(s) + j;
}

// The float epilogue y = dot * scale + bias as one fused multiply-add (a single rounding), as the
// CPU kernels compute it (ffi/cpu/xnor_epilogue.h), so both platforms return the same bits.
XNORJAX_HOST_DEVICE inline float ScaleBias(int64_t dot, float scale, float bias) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(static_cast<float>(dot), scale, bias);
#else
  return std::fma(static_cast<float>(dot), scale, bias);
#endif
}

// The packed epilogue: bit 1 where y >= 0 (NaN packs as 0, like pack_bits).
XNORJAX_HOST_DEVICE inline uint32_t SignBit(float y) { return y >= 0.0f ? 1u : 0u; }

// ---------------------------------------------------------------------------------------------
// The simple path: one thread per output value (per output word for _packed), XOR form.
// Obviously right, used for any shape or device the tensor-core path does not take, and as the
// second opinion in tests.

// Exact dot product of output (n, oh, ow, o), padded taps holding pad_value (0 contributes
// nothing and is not counted).
XNORJAX_HOST_DEVICE inline int64_t SimpleDot(const ConvShape& s, const uint32_t* x,
                                             const uint32_t* w, int64_t n, int64_t oh, int64_t ow,
                                             int64_t o) {
  int64_t dot = 0;
  for (int64_t kh = 0; kh < s.kernel_h; ++kh) {
    const int64_t ih = geometry::TapInputIndex(oh, kh, s.stride_h, s.pad_top);
    for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
      const int64_t iw = geometry::TapInputIndex(ow, kw, s.stride_w, s.pad_left);
      const int64_t j0 = (kh * s.kernel_w + kw) * s.in_words;  // K index of the tap's word 0
      const bool inside = geometry::TapInside(ih, s.in_h) && geometry::TapInside(iw, s.in_w);
      if (!inside && s.pad_value == 0) continue;
      const uint32_t* xt = inside ? x + ((n * s.in_h + ih) * s.in_w + iw) * s.in_words : nullptr;
      int64_t xor_popcount = 0;
      for (int64_t c = 0; c < s.in_words; ++c) {
        const uint32_t a =
            inside ? xt[c] : geometry::ConstantWord(s.pad_value, s.channels, c);
        xor_popcount +=
            Popcount((a ^ w[WeightOffset(s, o, j0 + c)]) & geometry::TailMask(s.channels, c));
      }
      dot += geometry::DotFromXorPopcount(s.channels, xor_popcount);
    }
  }
  return dot;
}

template <OutputKind kKind>
struct OutputTraits;
template <>
struct OutputTraits<OutputKind::kInt32> {
  using Type = int32_t;
};
template <>
struct OutputTraits<OutputKind::kFloat32> {
  using Type = float;
};
template <>
struct OutputTraits<OutputKind::kPacked> {
  using Type = uint32_t;
};

// Values per output row (pixel): O, or ceil(O / 32) words for _packed.
template <OutputKind kKind>
XNORJAX_HOST_DEVICE inline int64_t OutputRowLength(const ConvShape& s) {
  return kKind == OutputKind::kPacked ? OutputWords(s) : s.out_channels;
}

// Output element `index` of the row-major result [N, OH, OW, OutputRowLength], the simple way.
template <OutputKind kKind>
XNORJAX_HOST_DEVICE inline typename OutputTraits<kKind>::Type SimpleOutput(
    const ConvShape& s, const uint32_t* x, const uint32_t* w, const float* scale,
    const float* bias, int64_t index) {
  const int64_t row_length = OutputRowLength<kKind>(s);
  const int64_t m = index / row_length;
  const int64_t c = index - m * row_length;
  const int64_t ow = m % s.out_w;
  const int64_t oh = (m / s.out_w) % s.out_h;
  const int64_t n = m / (s.out_w * s.out_h);
  if constexpr (kKind == OutputKind::kInt32) {
    return static_cast<int32_t>(SimpleDot(s, x, w, n, oh, ow, c));
  } else if constexpr (kKind == OutputKind::kFloat32) {
    return ScaleBias(SimpleDot(s, x, w, n, oh, ow, c), scale[c], bias[c]);
  } else {
    uint32_t word = 0;
    for (int b = 0; b < geometry::kWordBits; ++b) {
      const int64_t o = c * geometry::kWordBits + b;
      if (o >= s.out_channels) break;
      const float y = ScaleBias(SimpleDot(s, x, w, n, oh, ow, o), scale[o], bias[o]);
      word |= SignBit(y) << geometry::BitOfChannel(o);
    }
    return word;
  }
}

// ---------------------------------------------------------------------------------------------
// The pre-pass of the tensor-core path (one small kernel before the GEMM).

// Popcount of the packed channels of input pixel p = (n * H + h) * W + w.
XNORJAX_HOST_DEVICE inline int32_t PixelPopcount(const ConvShape& s, const uint32_t* x,
                                                 int64_t pixel) {
  int32_t count = 0;
  const uint32_t* xp = x + pixel * s.in_words;
  for (int64_t c = 0; c < s.in_words; ++c) {
    count += Popcount(xp[c] & geometry::TailMask(s.channels, c));
  }
  return count;
}

// Entries of the per-channel prefix table over taps: (KH + 1) x (KW + 1).
XNORJAX_HOST_DEVICE inline int64_t PrefixTableSize(const ConvShape& s) {
  return (s.kernel_h + 1) * (s.kernel_w + 1);
}

// Fills table[(i * (KW + 1)) + j] = sum over taps kh < i, kw < j of popc(w[o, kh, kw, :]).
XNORJAX_HOST_DEVICE inline void WeightPrefixTable(const ConvShape& s, const uint32_t* w, int64_t o,
                                                  int32_t* table) {
  const int64_t stride = s.kernel_w + 1;
  for (int64_t j = 0; j <= s.kernel_w; ++j) table[j] = 0;
  for (int64_t i = 1; i <= s.kernel_h; ++i) {
    table[i * stride] = 0;
    int32_t row_sum = 0;
    for (int64_t j = 1; j <= s.kernel_w; ++j) {
      const int64_t k0 = ((i - 1) * s.kernel_w + (j - 1)) * s.in_words;
      for (int64_t c = 0; c < s.in_words; ++c) {
        row_sum += Popcount(w[WeightOffset(s, o, k0 + c)] & geometry::TailMask(s.channels, c));
      }
      table[i * stride + j] = table[(i - 1) * stride + j] + row_sum;
    }
  }
}

// Sum of the prefix table over the tap rectangle [y0, y1) x [x0, x1).
XNORJAX_HOST_DEVICE inline int32_t PrefixRectSum(const int32_t* table, int64_t kernel_w, int y0,
                                                 int y1, int x0, int x1) {
  const int64_t stride = kernel_w + 1;
  return table[y1 * stride + x1] - table[y0 * stride + x1] - table[y1 * stride + x0] +
         table[y0 * stride + x0];
}

// ---------------------------------------------------------------------------------------------
// The tensor-core path: tiles, shared-memory layout, gather, fragments, epilogue.

namespace tc {

constexpr int kThreads = 128;            // 4 warps: one warpgroup
constexpr int kWarps = kThreads / 32;
constexpr int kBlockRows = 64;           // output pixels per block
constexpr int kBlockCols = 64;           // output channels per block
constexpr int kStepWords = 8;            // 256 bits: the K of one m16n8k256 / m64n64k256 MMA
constexpr int kSlabSteps = 4;            // k-steps per shared-memory stage
constexpr int kSlabWords = kSlabSteps * kStepWords;
constexpr int kStages = 2;               // double buffering (cp.async)
constexpr int kTileBytes = kBlockRows * kStepWords * 4;  // one k-step of A (or B): 2 KiB
static_assert(kBlockRows == kBlockCols, "A and B k-step tiles share one layout and size");

// Per-block row (output pixel) data computed once before the K loop.
struct RowInfo {
  int64_t x_base;     // word offset of (n, ih0, iw0, 0): taps add (kh * W + kw) * Cw + word
  int32_t ih0, iw0;   // input row/column of tap (0, 0); TapInputIndex
  int32_t popc_a;     // popcount of the gathered A row (its inside taps)
  int16_t y0, y1, x0, x1;  // inside taps [y0, y1) x [x0, x1); y0 = y1 = 0 marks a row past M
};

// Per-block column (output channel) data.
struct ColInfo {
  int32_t popc_w;     // popcount of all of w[o]
  float scale, bias;
};

// Shared memory of one block: two stages of A and B slabs (k-step major, each k-step a
// [rows][8 words] tile stored with SwizzledWord, 2 KiB, so every tile starts 256-byte aligned as
// wgmma's 32-byte swizzle needs), then the row and column tables.
struct alignas(256) Smem {
  uint32_t a[kStages][kSlabSteps][kBlockRows * kStepWords];
  uint32_t b[kStages][kSlabSteps][kBlockCols * kStepWords];
  RowInfo rows[kBlockRows];
  ColInfo cols[kBlockCols];
};

XNORJAX_HOST_DEVICE inline int64_t Clamp(int64_t v, int64_t lo, int64_t hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}
XNORJAX_HOST_DEVICE inline int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
XNORJAX_HOST_DEVICE inline int64_t GridRows(const ConvShape& s) {
  return CeilDiv(GemmRows(s), kBlockRows);
}
XNORJAX_HOST_DEVICE inline int64_t GridCols(const ConvShape& s) {
  return CeilDiv(s.out_channels, kBlockCols);
}
XNORJAX_HOST_DEVICE inline int64_t KSteps(const ConvShape& s) {
  return CeilDiv(GemmKWords(s), kStepWords);
}
XNORJAX_HOST_DEVICE inline int64_t Slabs(const ConvShape& s) {
  return CeilDiv(GemmKWords(s), kSlabWords);
}

// Words per gather chunk V: the largest of 4, 2, 1 dividing Cw whose 4 * V bytes also divide the
// alignment of both operand addresses (XLA aligns buffers to 16 bytes or more; checked anyway).
// A chunk then never straddles a tap (nor the end of K, since Cw divides Kw), and every cp.async
// source is 4 * V-byte aligned.
XNORJAX_HOST_DEVICE inline int ChunkWords(const ConvShape& s, uint64_t x_address = 0,
                                          uint64_t w_address = 0) {
  int v = s.in_words % 4 == 0 ? 4 : (s.in_words % 2 == 0 ? 2 : 1);
  while (v > 1 && ((x_address | w_address) % (4u * v)) != 0) v /= 2;
  return v;
}

// The tensor-core path indexes rows, K-table offsets and grid columns with 32-bit integers; larger
// problems take the simple path.
XNORJAX_HOST_DEVICE inline bool MmaPathSupported(const ConvShape& s) {
  constexpr int64_t kMax32 = (int64_t{1} << 31) - 1;
  const int64_t tap_span = (s.kernel_h * s.in_w + s.kernel_w) * s.in_words;
  return GemmRows(s) + kBlockRows <= kMax32 && tap_span <= kMax32 &&
         s.out_h * s.out_w <= kMax32 && GridCols(s) <= 65535;
}

// The gather of one V-word chunk of K, independent of the output row: computed once per call by
// the pre-pass (no divisions in the K loop).
struct KChunk {
  int32_t offset;   // (kh * W + kw) * Cw + word, added to RowInfo::x_base
  int16_t kh, kw;   // the tap
};
XNORJAX_HOST_DEVICE inline int64_t KTableSize(const ConvShape& s, int chunk_words) {
  return GemmKWords(s) / chunk_words;
}
// The tensor-core path's scratch, one buffer that XLA allocates as the custom call's last result
// (XLA's FFI scratch allocator returned nothing on an H200 under jax 0.11; a result buffer is
// XLA's canonical workspace): pixel popcounts i32[N * H * W] at byte 0, the weights' prefix
// tables i32[O * PrefixTableSize] at `w_prefix`, the K table at `ktable` (8-byte aligned). Sized
// for chunk_words = 1, the largest K table: the width used depends on the buffers' addresses,
// known only at run time, and a wider chunk needs fewer entries.
struct ScratchLayout {
  int64_t w_prefix, ktable, bytes;  // byte offsets, and the total size
};
XNORJAX_HOST_DEVICE inline ScratchLayout MakeScratchLayout(const ConvShape& s) {
  const int64_t pixels = s.batch * s.in_h * s.in_w;
  const int64_t ints = pixels + s.out_channels * PrefixTableSize(s);
  ScratchLayout layout;
  layout.w_prefix = pixels * static_cast<int64_t>(sizeof(int32_t));
  layout.ktable = (ints + 1) / 2 * 2 * static_cast<int64_t>(sizeof(int32_t));
  layout.bytes = layout.ktable + KTableSize(s, 1) * static_cast<int64_t>(sizeof(KChunk));
  return layout;
}
// The three tables inside a scratch buffer laid out by MakeScratchLayout.
struct ScratchTables {
  int32_t* pixel_popc;
  int32_t* w_prefix;
  KChunk* ktable;
};
XNORJAX_HOST_DEVICE inline ScratchTables CarveScratch(const ScratchLayout& layout, uint8_t* base) {
  return ScratchTables{reinterpret_cast<int32_t*>(base),
                       reinterpret_cast<int32_t*>(base + layout.w_prefix),
                       reinterpret_cast<KChunk*>(base + layout.ktable)};
}
// Entry `index` (K words [index * V, index * V + V), V = chunk_words) of the K table.
XNORJAX_HOST_DEVICE inline KChunk MakeKChunk(const ConvShape& s, int chunk_words, int64_t index) {
  const int64_t j = index * chunk_words;
  const int64_t tap = j / s.in_words;
  const int64_t word = j - tap * s.in_words;
  KChunk k;
  k.kh = static_cast<int16_t>(tap / s.kernel_w);
  k.kw = static_cast<int16_t>(tap - k.kh * s.kernel_w);
  k.offset = static_cast<int32_t>((k.kh * s.in_w + k.kw) * s.in_words + word);
  return k;
}

// Word (row, word) of a [rows][8] k-step tile, with the 16-byte halves of rows 4..7 (mod 8)
// swapped, so that the 8 row addresses of each ldmatrix 8x8 matrix hit all 32 banks once.
XNORJAX_HOST_DEVICE inline int SwizzledWord(int row, int word) {
  return row * kStepWords + ((((word >> 2) ^ (row >> 2)) & 1) << 2) + (word & 3);
}

// Chunk `chunk` of a slab of `rows` rows (V words per chunk), enumerated k-step major, then row,
// then word, so that consecutive threads fill consecutive shared memory.
struct SlabChunk {
  int step, row, word;
};
XNORJAX_HOST_DEVICE inline SlabChunk SlabChunkAt(int chunk, int rows, int chunk_words) {
  const int per_row = kStepWords / chunk_words;
  SlabChunk c;
  c.word = (chunk % per_row) * chunk_words;
  c.row = (chunk / per_row) % rows;
  c.step = chunk / (per_row * rows);
  return c;
}
XNORJAX_HOST_DEVICE inline int SlabChunks(int rows, int chunk_words) {
  return kSlabSteps * rows * (kStepWords / chunk_words);
}

// Row data of GEMM row m (output pixel); `pixel_popc` holds PixelPopcount of every input pixel.
XNORJAX_HOST_DEVICE inline RowInfo MakeRowInfo(const ConvShape& s, const int32_t* pixel_popc,
                                               int64_t m) {
  RowInfo r;
  r.x_base = 0;
  r.ih0 = r.iw0 = 0;
  r.popc_a = 0;
  r.y0 = r.y1 = r.x0 = r.x1 = 0;
  if (m >= GemmRows(s)) return r;
  // 32-bit division (MmaPathSupported): m = (n * OH + oh) * OW + ow.
  const uint32_t m32 = static_cast<uint32_t>(m);
  const uint32_t out_w = static_cast<uint32_t>(s.out_w), out_hw = static_cast<uint32_t>(s.out_h * s.out_w);
  const int64_t n = m32 / out_hw;
  const uint32_t pixel = m32 - static_cast<uint32_t>(n) * out_hw;
  const int64_t oh = pixel / out_w;
  const int64_t ow = pixel - static_cast<uint32_t>(oh) * out_w;
  const int64_t ih0 = geometry::TapInputIndex(oh, 0, s.stride_h, s.pad_top);
  const int64_t iw0 = geometry::TapInputIndex(ow, 0, s.stride_w, s.pad_left);
  r.ih0 = static_cast<int32_t>(ih0);
  r.iw0 = static_cast<int32_t>(iw0);
  r.x_base = ((n * s.in_h + ih0) * s.in_w + iw0) * s.in_words;
  // Clamp into [0, K]; when either range is empty, the rectangle is empty.
  int64_t y0 = Clamp(geometry::InsideTapBegin(oh, s.stride_h, s.pad_top), 0, s.kernel_h);
  int64_t y1 = Clamp(geometry::InsideTapEnd(oh, s.stride_h, s.pad_top, s.in_h, s.kernel_h), y0,
                     s.kernel_h);
  int64_t x0 = Clamp(geometry::InsideTapBegin(ow, s.stride_w, s.pad_left), 0, s.kernel_w);
  int64_t x1 = Clamp(geometry::InsideTapEnd(ow, s.stride_w, s.pad_left, s.in_w, s.kernel_w), x0,
                     s.kernel_w);
  if (y1 == y0 || x1 == x0) {
    y1 = y0;
    x1 = x0;
  }
  r.y0 = static_cast<int16_t>(y0);
  r.y1 = static_cast<int16_t>(y1);
  r.x0 = static_cast<int16_t>(x0);
  r.x1 = static_cast<int16_t>(x1);
  int32_t popc = 0;
  const int64_t pixel0 = (n * s.in_h + ih0) * s.in_w + iw0;
  for (int64_t kh = y0; kh < y1; ++kh) {
    for (int64_t kw = x0; kw < x1; ++kw) popc += pixel_popc[pixel0 + kh * s.in_w + kw];
  }
  r.popc_a = popc;
  return r;
}

XNORJAX_HOST_DEVICE inline bool RowValid(const ConvShape& s, int64_t m) { return m < GemmRows(s); }

// Column data of output channel o (o may be past O: zeros, never stored).
XNORJAX_HOST_DEVICE inline ColInfo MakeColInfo(const ConvShape& s, const int32_t* w_prefix,
                                               const float* scale, const float* bias, int64_t o) {
  ColInfo c;
  c.popc_w = 0;
  c.scale = 0.0f;
  c.bias = 0.0f;
  if (o >= s.out_channels) return c;
  c.popc_w = w_prefix[o * PrefixTableSize(s) + PrefixTableSize(s) - 1];
  if (scale != nullptr) c.scale = scale[o];
  if (bias != nullptr) c.bias = bias[o];
  return c;
}

// Global word offset of the V words at K index j of A row `row`, or -1 for zeros (a padded tap,
// or j past K). `ktable` is the K table (MakeKChunk). A row past M has an empty rectangle
// (MakeRowInfo), so all its taps read as padding.
template <int V>
XNORJAX_HOST_DEVICE inline int64_t AChunkSource(const ConvShape& s, const RowInfo& row,
                                                const KChunk* ktable, int64_t j) {
  if (j >= GemmKWords(s)) return -1;
  const KChunk k = ktable[j / V];
  if (k.kh < row.y0 || k.kh >= row.y1 || k.kw < row.x0 || k.kw >= row.x1) return -1;
  return row.x_base + k.offset;
}

// Global word offset of the V words at K index j of B column (output channel) o, or -1 for zeros;
// output-major weights (contiguous along K).
XNORJAX_HOST_DEVICE inline int64_t BChunkSource(const ConvShape& s, int64_t o, int64_t j) {
  if (o >= s.out_channels || j >= GemmKWords(s)) return -1;
  return WeightOffset(s, o, j);
}

// Input-major weights are contiguous along O, not K: B is copied one word at a time, enumerated
// k-step major, then word, then column (row of the tile), so consecutive threads read
// consecutive output channels. Element e of a slab of B:
XNORJAX_HOST_DEVICE inline SlabChunk SlabColumnWordAt(int e) {
  SlabChunk c;
  c.row = e % kBlockCols;
  c.word = (e / kBlockCols) % kStepWords;
  c.step = e / (kBlockCols * kStepWords);
  return c;
}

// Fills shared-memory stage `stage` with slab `slab` of A (block rows) and B (block columns):
// the share of thread `thread` of the block. `copy(dst, src, operand, words)` copies `words`
// (V, or 1 for input-major weights) words from global word offset `src` of x (operand 0) or w
// (operand 1) to `dst`, or zero-fills `dst` when src < 0.
#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <int V, class Copy>
XNORJAX_HOST_DEVICE inline void LoadSlab(const ConvShape& s, const KChunk* ktable, Smem& smem,
                                         int64_t n0, int64_t slab, int stage, int thread,
                                         Copy&& copy) {
  const int64_t j0 = slab * kSlabWords;
  for (int chunk = thread; chunk < SlabChunks(kBlockRows, V); chunk += kThreads) {
    const SlabChunk c = SlabChunkAt(chunk, kBlockRows, V);
    const int64_t j = j0 + c.step * kStepWords + c.word;
    copy(&smem.a[stage][c.step][SwizzledWord(c.row, c.word)],
         AChunkSource<V>(s, smem.rows[c.row], ktable, j), 0, V);
  }
  if (!s.w_input_major) {
    for (int chunk = thread; chunk < SlabChunks(kBlockCols, V); chunk += kThreads) {
      const SlabChunk c = SlabChunkAt(chunk, kBlockCols, V);
      const int64_t j = j0 + c.step * kStepWords + c.word;
      copy(&smem.b[stage][c.step][SwizzledWord(c.row, c.word)], BChunkSource(s, n0 + c.row, j), 1,
           V);
    }
  } else {
    for (int e = thread; e < SlabChunks(kBlockCols, 1); e += kThreads) {
      const SlabChunk c = SlabColumnWordAt(e);
      const int64_t j = j0 + c.step * kStepWords + c.word;
      copy(&smem.b[stage][c.step][SwizzledWord(c.row, c.word)], BChunkSource(s, n0 + c.row, j), 1,
           1);
    }
  }
}

// After this thread's copies of slab `slab` into stage `stage` have landed (and before the
// barrier), zeroes the tail bits past C of the last word of each tap in the B chunks it copied,
// so the tensor cores' AND ignores any tail bits of both operands. Needed only when C % 32 != 0.
template <int V>
XNORJAX_HOST_DEVICE inline void MaskSlabTails(const ConvShape& s, Smem& smem,
                                              int64_t slab, int stage, int thread) {
  const uint32_t mask = geometry::TailMask(s.channels, s.in_words - 1);
  const int64_t j0 = slab * kSlabWords;
  const int64_t k_words = GemmKWords(s);
  // The chunks (or, input-major, the words) this thread copied, as LoadSlab enumerates them.
  const int words = s.w_input_major ? 1 : V;
  const int count = SlabChunks(kBlockCols, words);
  for (int chunk = thread; chunk < count; chunk += kThreads) {
    const SlabChunk c = s.w_input_major ? SlabColumnWordAt(chunk) : SlabChunkAt(chunk, kBlockCols, V);
    const int64_t j = j0 + c.step * kStepWords + c.word;  // first word copied
    if (j + words > k_words || (j + words) % s.in_words != 0) continue;  // no tap's last word
    smem.b[stage][c.step][SwizzledWord(c.row, c.word + words - 1)] &= mask;
  }
}

// Warp tilings of the 64 x 64 block. Both give each thread 32 accumulators, fragment f:
//  kSync:      warps 2 x 2, warp tile 32 x 32 (m16 tiles mt < 2, n8 tiles nt < 4), each warp runs
//              mma.sync.m16n8k256 on its tile; f = (mt * 4 + nt) * 4 + r.
//  kWarpgroup: warps 4 x 1, warp tile 16 x 64 (nt < 8); f = nt * 4 + r. On sm_90a the block, one
//              warpgroup, runs one wgmma.m64n64k256 per k-step, whose accumulator layout is
//              exactly this; elsewhere each warp runs mma.sync on its 16 x 64 tile.
// Register r of an n8 tile is (row AccRow, column AccCol) of that 16 x 8 tile, per the PTX ISA
// fragment layouts of mma.m16n8k256 .s32 and of wgmma .m64nNk256 .s32 (rows 16 w.. of warp w).
enum class Tiling : int { kSync = 0, kWarpgroup = 1 };
constexpr int kFragments = 32;

template <Tiling kT>
constexpr int WarpMTiles() { return kT == Tiling::kSync ? 2 : 1; }
template <Tiling kT>
constexpr int WarpNTiles() { return kT == Tiling::kSync ? 4 : 8; }
template <Tiling kT>
XNORJAX_HOST_DEVICE inline int WarpRowOffset(int warp) {
  return kT == Tiling::kSync ? (warp & 1) * 32 : warp * 16;
}
template <Tiling kT>
XNORJAX_HOST_DEVICE inline int WarpColOffset(int warp) {
  return kT == Tiling::kSync ? (warp >> 1) * 32 : 0;
}
template <Tiling kT>
XNORJAX_HOST_DEVICE constexpr int FragmentIndex(int mt, int nt, int r) {
  return (mt * WarpNTiles<kT>() + nt) * 4 + r;
}

// ldmatrix.x4 row addresses. Lane L supplies the address of row L % 8 of 8x8 matrix L / 8; a
// matrix of .b16 pairs is 8 rows x 16 bytes = 8 rows x 128 bits.
//  A (16 rows x 256 bits): matrix q = rows (q & 1) * 8.., 16-byte half q >> 1, so that destination
//    register q is the mma A register a_q (rows g / g + 8, K bits 0-127 / 128-255).
//  B (two n8 tiles x 256 bits): matrix q = channels (q >> 1) * 8.., half q & 1, so registers
//    (0, 1) are b0, b1 of the first n8 tile and (2, 3) of the second.
XNORJAX_HOST_DEVICE inline int LdmatrixARow(int lane) { return ((lane >> 3) & 1) * 8 + (lane & 7); }
XNORJAX_HOST_DEVICE inline int LdmatrixAHalf(int lane) { return lane >> 4; }
XNORJAX_HOST_DEVICE inline int LdmatrixBRow(int lane) { return (lane >> 4) * 8 + (lane & 7); }
XNORJAX_HOST_DEVICE inline int LdmatrixBHalf(int lane) { return (lane >> 3) & 1; }

// Shared-memory word offsets (within one k-step tile) of the ldmatrix.x4 row address of `lane`:
// for the A m16 tile `mt` of `warp`, and for the B n8 tiles (2 np, 2 np + 1).
template <Tiling kT>
XNORJAX_HOST_DEVICE inline int ALdmatrixOffset(int warp, int mt, int lane) {
  return SwizzledWord(WarpRowOffset<kT>(warp) + mt * 16 + LdmatrixARow(lane),
                      LdmatrixAHalf(lane) * 4);
}
template <Tiling kT>
XNORJAX_HOST_DEVICE inline int BLdmatrixOffset(int warp, int np, int lane) {
  return SwizzledWord(WarpColOffset<kT>(warp) + np * 16 + LdmatrixBRow(lane),
                      LdmatrixBHalf(lane) * 4);
}
// Destination register q of the B ldmatrix for pair np is register LdmatrixBReg(q) of n8 tile
// LdmatrixBTile(np, q).
XNORJAX_HOST_DEVICE inline int LdmatrixBTile(int np, int q) { return 2 * np + (q >> 1); }
XNORJAX_HOST_DEVICE inline int LdmatrixBReg(int q) { return q & 1; }

// Accumulator register r of `lane` in an m16n8 tile: (row, column) per the PTX ISA fragment
// layout for mma.m16n8k256 with .s32 accumulators.
XNORJAX_HOST_DEVICE inline int AccRow(int lane, int r) { return (lane >> 2) + 8 * (r >> 1); }
XNORJAX_HOST_DEVICE inline int AccCol(int lane, int r) { return 2 * (lane & 3) + (r & 1); }

// Block row and column of fragment f of (warp, lane).
template <Tiling kT>
XNORJAX_HOST_DEVICE inline int FragmentRow(int warp, int lane, int f) {
  return WarpRowOffset<kT>(warp) + (f / (4 * WarpNTiles<kT>())) * 16 + AccRow(lane, f & 3);
}
template <Tiling kT>
XNORJAX_HOST_DEVICE inline int FragmentCol(int warp, int lane, int f) {
  return WarpColOffset<kT>(warp) + ((f >> 2) % WarpNTiles<kT>()) * 8 + AccCol(lane, f & 3);
}

// The wgmma shared-memory matrix descriptor of one k-step tile at shared address `address`:
// K-major with 32-byte swizzling, whose atom is 8 rows of 32 bytes (exactly one k-step of 8 rows)
// with the 16-byte halves of rows 4..7 swapped: the SwizzledWord layout. Atoms of 8 rows lie
// 256 bytes apart (stride byte offset); one atom spans K, so the leading byte offset is unused (1).
// Tiles start 256-byte aligned, so the base offset is 0.
XNORJAX_HOST_DEVICE inline uint64_t WgmmaDescriptor(uint32_t address) {
  return static_cast<uint64_t>((address & 0x3FFFFu) >> 4) | (uint64_t{1} << 16) |
         (uint64_t{256 >> 4} << 32) | (uint64_t{3} << 62);
}

// The exact dot product of (row, column) from the AND-popcount accumulator `acc`.
// `w_prefix_o` is the prefix table of output channel o (read only for border rows when the
// padding value is not -1).
XNORJAX_HOST_DEVICE inline int64_t EpilogueDot(const ConvShape& s, const RowInfo& row,
                                               const ColInfo& col, const int32_t* w_prefix_o,
                                               int32_t acc) {
  int64_t dot = geometry::DotFromAndPopcount(FullKernelBits(s), row.popc_a, col.popc_w, acc);
  const int64_t inside_taps = static_cast<int64_t>(row.y1 - row.y0) * (row.x1 - row.x0);
  const int64_t outside_taps = KernelTaps(s) - inside_taps;
  if (s.pad_value != -1 && outside_taps > 0) {
    const int64_t inside_popc =
        inside_taps > 0 ? PrefixRectSum(w_prefix_o, s.kernel_w, row.y0, row.y1, row.x0, row.x1)
                        : 0;
    const int64_t outside_sum =
        geometry::SumFromPopcount(s.channels * outside_taps, col.popc_w - inside_popc);
    dot += geometry::PadCorrection(s.pad_value, -1, outside_sum);
  }
  return dot;
}

// Packed epilogue. A lane's 32 fragments cover 4 (row, output word) slots, fragment f in slot
// FragmentSlot(f): kSync, rows (mt, r >> 1) of the warp's one 32-column word; kWarpgroup, rows
// r >> 1 of its two words nt >> 2. The 4 lanes of a quad hold the same rows: their slot words are
// OR-ed together, then lane (lane & 3) == slot stores slot `slot`.
template <Tiling kT>
XNORJAX_HOST_DEVICE constexpr int FragmentSlot(int f) {
  return kT == Tiling::kSync ? (f >> 4) * 2 + ((f & 3) >> 1) : ((f & 3) >> 1) * 2 + (f >> 4);
}
template <Tiling kT>
XNORJAX_HOST_DEVICE inline int SlotRow(int warp, int lane, int slot) {
  return kT == Tiling::kSync ? WarpRowOffset<kT>(warp) + (slot >> 1) * 16 + (lane >> 2) + 8 * (slot & 1)
                             : WarpRowOffset<kT>(warp) + (lane >> 2) + 8 * (slot >> 1);
}
template <Tiling kT>
XNORJAX_HOST_DEVICE inline int64_t SlotWordCol(int64_t n0, int warp, int slot) {
  return kT == Tiling::kSync ? geometry::WordOfChannel(n0 + WarpColOffset<kT>(warp))
                             : geometry::WordOfChannel(n0) + (slot & 1);
}
XNORJAX_HOST_DEVICE inline bool StoresSlot(int lane, int slot) { return (lane & 3) == slot; }

}  // namespace tc
}  // namespace cuda
}  // namespace xnorjax
