// Shared helpers for the xnorjax XLA FFI handlers.
#pragma once

#include <cstdint>
#include <string>
#include <utility>

#include "xla/ffi/api/ffi.h"

namespace xnorjax {

namespace ffi = xla::ffi;

// Number of 32-bit words needed to hold `bits` bits.
constexpr int64_t WordsFor(int64_t bits) { return (bits + 31) / 32; }

// "[d0, d1, ...]", for error messages.
inline std::string Dims(ffi::Span<const int64_t> dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

inline ffi::Error InvalidArgument(const std::string& message) {
  return ffi::Error(ffi::ErrorCode::kInvalidArgument, message);
}

// The shape of a pack along the last axis, f32[..., n] -> u32[..., ceil(n / 32)]: checks the
// output against the input and gives the number of rows (all leading axes, including any added
// by vmap), n and the words per row. Shared by the CPU and CUDA pack_bits handlers.
template <typename Dims>
ffi::Error PackedRowsShape(const Dims& dims, const Dims& out_dims, int64_t& rows, int64_t& n,
                           int64_t& words) {
  if (dims.size() < 1 || out_dims.size() != dims.size()) {
    return InvalidArgument("pack_bits: input and output must have the same rank >= 1");
  }
  n = dims.back();
  words = WordsFor(n);
  rows = 1;
  for (size_t i = 0; i + 1 < dims.size(); ++i) {
    if (out_dims[i] != dims[i]) return InvalidArgument("pack_bits: leading dimensions differ");
    rows *= dims[i];
  }
  if (out_dims.back() != words) {
    return InvalidArgument("pack_bits: output must hold ceil(n / 32) words per row");
  }
  return ffi::Error::Success();
}

// The attributes of the xnor_conv / xnor_dense targets, appended to a binding (the same on every
// platform; see xnorjax/ops/xnor.py for the contract).
template <typename Binding>
auto ConvAttrsOf(Binding binding) {
  return std::move(binding)
      .template Attr<int64_t>("channels")
      .template Attr<int64_t>("stride_h")
      .template Attr<int64_t>("stride_w")
      .template Attr<int64_t>("pad_top")
      .template Attr<int64_t>("pad_bottom")
      .template Attr<int64_t>("pad_left")
      .template Attr<int64_t>("pad_right")
      .template Attr<int64_t>("pad_value")
      .template Attr<int64_t>("impl");
}
template <typename Binding>
auto DenseAttrsOf(Binding binding) {
  return std::move(binding).template Attr<int64_t>("features").template Attr<int64_t>("impl");
}

}  // namespace xnorjax
