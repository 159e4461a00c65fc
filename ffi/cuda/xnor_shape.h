// Validation of the packed conv / dense FFI operands and attributes for the CUDA handlers
// (ffi/cuda/xnor_conv.cu), host code shared with xnorjax._cuda_host so CPU tests check it.
// Every shape and attribute is checked against the others; a mismatch is an error message, never
// an out-of-bounds access. The limits keep every index of the kernels in range of its type.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "conv_geometry.h"
#include "cuda/xnor_plan.h"

namespace xnorjax {
namespace cuda {

// `impl` attribute values. The contract's values (0 auto, 1 AVX-512, 2 AVX2, 3 portable) all mean
// "auto" on CUDA; these CUDA-only values pick one path (tests and experiments/gpu/check.py).
constexpr int64_t kImplSimple = 100;  // one thread per output, XOR + __popc
constexpr int64_t kImplMma = 101;     // mma.sync m16n8k256 AND-popc tensor cores (sm_80+)
// Warpgroup tiling: wgmma.m64n64k256 AND-popc where the loaded code is sm_90a (Hopper), the same
// tiling on mma.sync elsewhere. Experimental: not chosen automatically until measured on a GPU.
constexpr int64_t kImplWgmma = 102;

// Dimensions of one buffer.
struct Dims {
  const int64_t* data;
  size_t size;
  int64_t operator[](size_t i) const { return data[i]; }
};

struct ConvAttrs {
  int64_t channels, stride_h, stride_w, pad_top, pad_bottom, pad_left, pad_right, pad_value, impl;
};

inline std::string DimsString(Dims d) {
  std::string s = "[";
  for (size_t i = 0; i < d.size; ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + "]";
}

inline bool ValidImpl(int64_t impl) {
  return (impl >= 0 && impl <= 3) || impl == kImplSimple || impl == kImplMma || impl == kImplWgmma;
}

// Largest spatial size, kernel size, stride, padding and channel count the kernels index with
// their 32-bit and 16-bit fields.
constexpr int64_t kMaxSpatial = int64_t{1} << 28;
constexpr int64_t kMaxKernel = 255;
constexpr int64_t kMaxDotBits = (int64_t{1} << 31) - 1;

// Checks a conv call; on success fills `shape` and returns "". `kind` selects the result layout;
// scale and bias (F32[O]) exist for kFloat32 and kPacked only (pass nullptr dims otherwise).
// `w_input_major`: w is u32[KH, KW, Cw, O] (the public packed layout, targets "..._hwio") rather
// than u32[O, KH, KW, Cw] (the contract's targets).
inline std::string ValidateConv(Dims x, Dims w_dims, const Dims* scale, const Dims* bias, Dims out,
                                OutputKind kind, const ConvAttrs& a, ConvShape* shape,
                                bool w_input_major = false) {
  const std::string where = "xnor_conv (CUDA): ";
  if (x.size != 4) return where + "x must be u32[N, H, W, Cw], got dims " + DimsString(x);
  if (w_dims.size != 4) {
    return where + "w must be u32" + (w_input_major ? "[KH, KW, Cw, O]" : "[O, KH, KW, Cw]") +
           ", got dims " + DimsString(w_dims);
  }
  for (size_t i = 0; i < 4; ++i) {
    if (x[i] < 0 || w_dims[i] < 0) return where + "negative dimension";
  }
  // w as [O, KH, KW, Cw] whatever its layout.
  const int64_t w_ohwi[4] = {w_input_major ? w_dims[3] : w_dims[0],
                             w_input_major ? w_dims[0] : w_dims[1],
                             w_input_major ? w_dims[1] : w_dims[2],
                             w_input_major ? w_dims[2] : w_dims[3]};
  const Dims w{w_ohwi, 4};
  if (x[3] < 1 || x[3] != w[3]) {
    return where + "x and w must have the same Cw >= 1, got x " + DimsString(x) + ", w " +
           DimsString(w_dims);
  }
  if (w[1] < 1 || w[2] < 1 || w[1] > kMaxKernel || w[2] > kMaxKernel) {
    return where + "kernel size must be in [1, 255], got w " + DimsString(w_dims);
  }
  if (a.channels < 1 || geometry::PackedWords(a.channels) != x[3]) {
    return where + "channels=" + std::to_string(a.channels) + " does not need Cw=" +
           std::to_string(x[3]) + " words";
  }
  if (a.stride_h < 1 || a.stride_w < 1 || a.stride_h > kMaxSpatial || a.stride_w > kMaxSpatial) {
    return where + "strides must be >= 1";
  }
  for (int64_t p : {a.pad_top, a.pad_bottom, a.pad_left, a.pad_right}) {
    if (p < 0 || p > kMaxSpatial) return where + "paddings must be in [0, 2^28]";
  }
  if (a.pad_value < -1 || a.pad_value > 1) {
    return where + "pad_value must be -1, 0 or 1, got " + std::to_string(a.pad_value);
  }
  if (!ValidImpl(a.impl)) return where + "unknown impl " + std::to_string(a.impl);
  if (x[1] > kMaxSpatial || x[2] > kMaxSpatial) return where + "spatial size too large";
  if (a.channels * w[1] * w[2] > kMaxDotBits) return where + "C * KH * KW must be < 2^31";
  ConvShape s;
  s.batch = x[0];
  s.in_h = x[1];
  s.in_w = x[2];
  s.in_words = x[3];
  s.channels = a.channels;
  s.out_channels = w[0];
  s.kernel_h = w[1];
  s.kernel_w = w[2];
  s.stride_h = a.stride_h;
  s.stride_w = a.stride_w;
  s.pad_top = a.pad_top;
  s.pad_left = a.pad_left;
  s.pad_value = a.pad_value;
  s.out_h = geometry::ConvOutputSize(s.in_h, s.kernel_h, s.stride_h, a.pad_top, a.pad_bottom);
  s.out_w = geometry::ConvOutputSize(s.in_w, s.kernel_w, s.stride_w, a.pad_left, a.pad_right);
  s.w_input_major = w_input_major;
  const int64_t last = kind == OutputKind::kPacked ? OutputWords(s) : s.out_channels;
  if (out.size != 4 || out[0] != s.batch || out[1] != s.out_h || out[2] != s.out_w ||
      out[3] != last) {
    return where + "result dims " + DimsString(out) + " do not match [" + std::to_string(s.batch) +
           ", " + std::to_string(s.out_h) + ", " + std::to_string(s.out_w) + ", " +
           std::to_string(last) + "]";
  }
  if (kind != OutputKind::kInt32) {
    if (scale == nullptr || bias == nullptr) return where + "scale and bias are required";
    if (scale->size != 1 || (*scale)[0] != s.out_channels || bias->size != 1 ||
        (*bias)[0] != s.out_channels) {
      return where + "scale and bias must be f32[O] with O=" + std::to_string(s.out_channels);
    }
  }
  if (GemmRows(s) > (int64_t{1} << 40)) return where + "too many output pixels";
  *shape = s;
  return "";
}

// A dense layer as a conv on 1x1 maps: x u32[M, Kw] rows are pixels, w u32[N, Kw] a 1x1 kernel.
// `w_input_major`: w is u32[Kw, N] (targets "..._kn") rather than u32[N, Kw].
inline std::string ValidateDense(Dims x, Dims w_dims, const Dims* scale, const Dims* bias,
                                 Dims out, OutputKind kind, int64_t features, int64_t impl,
                                 ConvShape* shape, bool w_input_major = false) {
  const std::string where = "xnor_dense (CUDA): ";
  if (x.size != 2 || w_dims.size != 2) {
    return where + "x must be u32[M, Kw] and w u32" + (w_input_major ? "[Kw, N]" : "[N, Kw]") +
           ", got " + DimsString(x) + " and " + DimsString(w_dims);
  }
  const int64_t w_nk[2] = {w_input_major ? w_dims[1] : w_dims[0],
                           w_input_major ? w_dims[0] : w_dims[1]};
  const Dims w{w_nk, 2};
  if (x[0] < 0 || w[0] < 0 || x[1] < 1 || x[1] != w[1]) {
    return where + "x and w must have the same Kw >= 1, got " + DimsString(x) + " and " +
           DimsString(w_dims);
  }
  if (features < 1 || geometry::PackedWords(features) != x[1]) {
    return where + "features=" + std::to_string(features) + " does not need Kw=" +
           std::to_string(x[1]) + " words";
  }
  if (features > kMaxDotBits) return where + "features must be < 2^31";
  if (!ValidImpl(impl)) return where + "unknown impl " + std::to_string(impl);
  ConvShape s;
  s.batch = x[0];
  s.in_h = s.in_w = 1;
  s.in_words = x[1];
  s.channels = features;
  s.out_channels = w[0];
  s.kernel_h = s.kernel_w = 1;
  s.stride_h = s.stride_w = 1;
  s.pad_top = s.pad_left = 0;
  s.pad_value = 0;
  s.out_h = s.out_w = 1;
  s.w_input_major = w_input_major;
  const int64_t last = kind == OutputKind::kPacked ? OutputWords(s) : s.out_channels;
  if (out.size != 2 || out[0] != s.batch || out[1] != last) {
    return where + "result dims " + DimsString(out) + " do not match [" + std::to_string(s.batch) +
           ", " + std::to_string(last) + "]";
  }
  if (kind != OutputKind::kInt32) {
    if (scale == nullptr || bias == nullptr) return where + "scale and bias are required";
    if (scale->size != 1 || (*scale)[0] != s.out_channels || bias->size != 1 ||
        (*bias)[0] != s.out_channels) {
      return where + "scale and bias must be f32[N] with N=" + std::to_string(s.out_channels);
    }
  }
  if (GemmRows(s) > (int64_t{1} << 40)) return where + "too many rows";
  *shape = s;
  return "";
}

// Bytes of the scratch result (tc::MakeScratchLayout) of a conv on u32[N, H, W, Cw] with a
// [KH, KW] kernel and O output channels; a dense layer is the 1x1 case (ValidateDense). The Python
// wrapper sizes the custom call's last result with it when it lowers the call.
inline int64_t ScratchBytes(int64_t batch, int64_t in_h, int64_t in_w, int64_t in_words,
                            int64_t kernel_h, int64_t kernel_w, int64_t out_channels) {
  ConvShape s;
  s.batch = batch;
  s.in_h = in_h;
  s.in_w = in_w;
  s.in_words = in_words;
  s.kernel_h = kernel_h;
  s.kernel_w = kernel_w;
  s.out_channels = out_channels;
  return tc::MakeScratchLayout(s).bytes;
}

// Which kernel runs: the tensor-core path needs compute capability 8.0 (mma.sync .b1 AND-popc).
enum class Path : int { kSimple = 0, kMma = 1, kWarpgroup = 2 };

// The path for `impl` on a device of compute capability `cc_major`; "" or an error message.
inline std::string ChoosePath(int64_t impl, int cc_major, Path* path) {
  if (impl == kImplSimple) {
    *path = Path::kSimple;
    return "";
  }
  if (impl == kImplMma || impl == kImplWgmma) {
    if (cc_major < 8) {
      return "impl=" + std::to_string(impl) + " (tensor cores) needs compute capability >= 8.0";
    }
    *path = impl == kImplMma ? Path::kMma : Path::kWarpgroup;
    return "";
  }
  *path = cc_major >= 8 ? Path::kMma : Path::kSimple;
  return "";
}

}  // namespace cuda
}  // namespace xnorjax
