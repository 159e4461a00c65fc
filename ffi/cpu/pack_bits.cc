#include "cpu/pack_bits.h"

#include <algorithm>
#include <cstdint>

#include "ffi_common.h"

namespace xnorjax {
namespace {

void PackRow(const float* x, int64_t n, uint32_t* out) {
  const int64_t full_words = n / 32;
  for (int64_t w = 0; w < full_words; ++w) {
    uint32_t word = 0;
    const float* chunk = x + 32 * w;
    for (int b = 0; b < 32; ++b) word |= static_cast<uint32_t>(chunk[b] >= 0.0f) << b;
    out[w] = word;
  }
  const int64_t tail = n - 32 * full_words;
  if (tail > 0) {
    uint32_t word = 0;
    const float* chunk = x + 32 * full_words;
    for (int64_t b = 0; b < tail; ++b) word |= static_cast<uint32_t>(chunk[b] >= 0.0f) << b;
    out[full_words] = word;
  }
}

ffi::Error PackBitsImpl(ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::U32> out) {
  // Packs along the last axis; all leading axes (including any added by vmap) are rows.
  const auto dims = x.dimensions();
  const auto out_dims = out->dimensions();
  if (dims.size() < 1 || out_dims.size() != dims.size()) {
    return InvalidArgument("pack_bits: input and output must have the same rank >= 1");
  }
  const int64_t n = dims.back();
  const int64_t words = WordsFor(n);
  int64_t rows = 1;
  for (size_t i = 0; i + 1 < dims.size(); ++i) {
    if (out_dims[i] != dims[i]) return InvalidArgument("pack_bits: leading dimensions differ");
    rows *= dims[i];
  }
  if (out_dims.back() != words) {
    return InvalidArgument("pack_bits: output must hold ceil(n / 32) words per row");
  }
  const float* src = x.typed_data();
  uint32_t* dst = out->typed_data();
  for (int64_t r = 0; r < rows; ++r) PackRow(src + r * n, n, dst + r * words);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(PackBitsCpu, PackBitsImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::U32>>());

}  // namespace xnorjax
