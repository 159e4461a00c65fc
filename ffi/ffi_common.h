// Shared helpers for the xnorjax XLA FFI handlers.
#pragma once

#include <cstdint>
#include <string>

#include "xla/ffi/api/ffi.h"

namespace xnorjax {

namespace ffi = xla::ffi;

// Number of 32-bit words needed to hold `bits` bits.
constexpr int64_t WordsFor(int64_t bits) { return (bits + 31) / 32; }

inline ffi::Error InvalidArgument(const std::string& message) {
  return ffi::Error(ffi::ErrorCode::kInvalidArgument, message);
}

}  // namespace xnorjax
