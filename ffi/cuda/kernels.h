// The CUDA FFI handlers of xnorjax (registered for platform "CUDA" by xnorjax._ffi_cuda).
#pragma once

#include "xla/ffi/api/ffi.h"

namespace xnorjax {

XLA_FFI_DECLARE_HANDLER_SYMBOL(PackBitsCuda);  // "xnorjax_pack_bits", as ffi/cpu/pack_bits.h

}  // namespace xnorjax
