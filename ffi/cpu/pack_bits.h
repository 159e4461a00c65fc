// Bit packing along the last axis: bit 1 for x >= 0, 32 values per uint32 word.
#pragma once

#include "xla/ffi/api/ffi.h"

namespace xnorjax {

// FFI handler "xnorjax_pack_bits": f32[..., n] -> u32[..., ceil(n / 32)].
// Value j of a row goes to bit (j % 32) of word (j / 32); the unused high bits of the last word
// are zero, so XOR/AND popcounts over whole words need no tail mask.
XLA_FFI_DECLARE_HANDLER_SYMBOL(PackBitsCpu);

}  // namespace xnorjax
