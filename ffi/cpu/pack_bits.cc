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
  int64_t rows = 0, n = 0, words = 0;
  if (ffi::Error error = PackedRowsShape(x.dimensions(), out->dimensions(), rows, n, words);
      error.failure()) {
    return error;
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
