// Geometry of the packed XNOR-popcount convolution, shared by the CPU (ffi/cpu) and CUDA
// (ffi/cuda) kernels. Everything here is a small pure function, usable on host and device; the
// nanobind module xnorjax._ffi exposes them (xnorjax._ffi.geometry) so that CPU tests exercise
// exactly the code the GPU kernels use.
//
// Conventions (see xnorjax/ops/packing.py and the FFI contract in xnorjax/ops/xnor.py):
//   * bit 1 = +1, bit 0 = -1; value j of a packed axis is bit (j % 32) of word (j / 32); the unused
//     tail bits of the last word are 0, so XOR and AND popcounts over whole words count real bits.
//   * input x u32[N, H, W, Cw], weights w u32[O, KH, KW, Cw], Cw = PackedWords(C).
//   * output row oh reads input rows TapInputIndex(oh, kh, stride_h, pad_top) for kh < KH, and
//     likewise for columns; a tap outside the image reads the padding value (-1, 0 or +1).
//   * a kernel may treat padded taps as holding some +-1 value `assumed_pad` (for instance by
//     reading a physically padded copy of the input) and add PadCorrection afterwards; with
//     pad_value == assumed_pad the correction is 0.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define XNORJAX_HOST_DEVICE __host__ __device__
#else
#define XNORJAX_HOST_DEVICE
#endif

namespace xnorjax {
namespace geometry {

constexpr int kWordBits = 32;

// Number of 32-bit words that hold `bits` packed bits.
XNORJAX_HOST_DEVICE inline int64_t PackedWords(int64_t bits) {
  return (bits + kWordBits - 1) / kWordBits;
}

// Mask of the real (non-tail) bits of word `word` of a packed axis of `bits` values.
XNORJAX_HOST_DEVICE inline uint32_t TailMask(int64_t bits, int64_t word) {
  const int64_t remaining = bits - word * kWordBits;
  if (remaining >= kWordBits) return 0xFFFFFFFFu;
  if (remaining <= 0) return 0u;
  return (1u << remaining) - 1u;
}

// The packed word `word` of an axis of `bits` values that all equal `value` (+1 or -1):
// all real bits set for +1, none for -1; tail bits always 0.
XNORJAX_HOST_DEVICE inline uint32_t ConstantWord(int64_t value, int64_t bits, int64_t word) {
  return value > 0 ? TailMask(bits, word) : 0u;
}

// Output length of one spatial axis, or 0 when the padded input is shorter than the kernel.
XNORJAX_HOST_DEVICE inline int64_t ConvOutputSize(int64_t in, int64_t kernel, int64_t stride,
                                                  int64_t pad_lo, int64_t pad_hi) {
  const int64_t span = in + pad_lo + pad_hi - kernel;
  return span < 0 ? 0 : span / stride + 1;
}

// Input index read by tap `tap` of output index `out` (may be < 0 or >= the input size: padding).
XNORJAX_HOST_DEVICE inline int64_t TapInputIndex(int64_t out, int64_t tap, int64_t stride,
                                                 int64_t pad_lo) {
  return out * stride - pad_lo + tap;
}

// Whether input index `index` lies inside an axis of length `size`.
XNORJAX_HOST_DEVICE inline bool TapInside(int64_t index, int64_t size) {
  return index >= 0 && index < size;
}

// The taps [InsideTapBegin, InsideTapEnd) of output index `out` lie inside the input; the others
// read padding. Begin >= End when no tap is inside.
XNORJAX_HOST_DEVICE inline int64_t InsideTapBegin(int64_t out, int64_t stride, int64_t pad_lo) {
  const int64_t begin = pad_lo - out * stride;
  return begin > 0 ? begin : 0;
}
XNORJAX_HOST_DEVICE inline int64_t InsideTapEnd(int64_t out, int64_t stride, int64_t pad_lo,
                                                int64_t in, int64_t kernel) {
  const int64_t end = in + pad_lo - out * stride;
  return end < kernel ? end : kernel;
}

// Whether every tap of output index `out` is inside the input (no padding correction needed).
XNORJAX_HOST_DEVICE inline bool AllTapsInside(int64_t out, int64_t stride, int64_t pad_lo,
                                              int64_t in, int64_t kernel) {
  return InsideTapBegin(out, stride, pad_lo) == 0 &&
         InsideTapEnd(out, stride, pad_lo, in, kernel) == kernel;
}

// Dot product of `bits` +-1 pairs from the popcount of their XOR (differing signs).
XNORJAX_HOST_DEVICE inline int64_t DotFromXorPopcount(int64_t bits, int64_t xor_popcount) {
  return bits - 2 * xor_popcount;
}

// The same from AND popcounts (the form NVIDIA tensor cores compute natively):
// dot = bits - 2 * (popc(a) + popc(w)) + 4 * popc(a & w).
XNORJAX_HOST_DEVICE inline int64_t DotFromAndPopcount(int64_t bits, int64_t a_popcount,
                                                      int64_t w_popcount, int64_t and_popcount) {
  return bits - 2 * (a_popcount + w_popcount) + 4 * and_popcount;
}

// Sum of `bits` +-1 values of which `popcount` are +1.
XNORJAX_HOST_DEVICE inline int64_t SumFromPopcount(int64_t bits, int64_t popcount) {
  return 2 * popcount - bits;
}

// Correction to add to a dot product computed as if every padded tap held `assumed_pad` (+-1),
// to get the dot product with padded taps holding `pad_value` (-1, 0 or +1).
// `outside_weight_sum` is the sum of the +-1 weights over the taps outside the input (for the
// output position and output channel at hand): each such tap contributed
// assumed_pad * weight instead of pad_value * weight.
XNORJAX_HOST_DEVICE inline int64_t PadCorrection(int64_t pad_value, int64_t assumed_pad,
                                                 int64_t outside_weight_sum) {
  return (pad_value - assumed_pad) * outside_weight_sum;
}

// Packed output (the _packed targets): output channel o is bit BitOfChannel(o) of word
// WordOfChannel(o); its bit is 1 when the epilogue value is >= 0 (the sign convention of pack_bits).
XNORJAX_HOST_DEVICE inline int64_t WordOfChannel(int64_t channel) { return channel / kWordBits; }
XNORJAX_HOST_DEVICE inline int BitOfChannel(int64_t channel) {
  return static_cast<int>(channel % kWordBits);
}

}  // namespace geometry
}  // namespace xnorjax
