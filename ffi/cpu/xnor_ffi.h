// XLA FFI handlers of the packed XNOR-popcount conv and dense targets on the CPU. Operands,
// attributes and results follow the FFI contract documented in xnorjax/ops/xnor.py.
#pragma once

#include "xla/ffi/api/ffi.h"

namespace xnorjax {

XLA_FFI_DECLARE_HANDLER_SYMBOL(XnorConvI32Cpu);     // "xnorjax_xnor_conv_i32"
XLA_FFI_DECLARE_HANDLER_SYMBOL(XnorConvF32Cpu);     // "xnorjax_xnor_conv_f32"
XLA_FFI_DECLARE_HANDLER_SYMBOL(XnorConvPackedCpu);  // "xnorjax_xnor_conv_packed"
XLA_FFI_DECLARE_HANDLER_SYMBOL(XnorDenseI32Cpu);     // "xnorjax_xnor_dense_i32"
XLA_FFI_DECLARE_HANDLER_SYMBOL(XnorDenseF32Cpu);     // "xnorjax_xnor_dense_f32"
XLA_FFI_DECLARE_HANDLER_SYMBOL(XnorDensePackedCpu);  // "xnorjax_xnor_dense_packed"

// CPU-only variants taking the weights in their public packed layout, as is: conv w
// u32[KH, KW, Cw, O] = pack_bits(kernel_hwio, axis=-2), dense w u32[Kw, N] = pack_bits(kernel,
// axis=-2). Everything else as above. The CPU microkernels read weights in exactly this
// (output-channel-minor) order, so these need no per-call transpose of the weights.
XLA_FFI_DECLARE_HANDLER_SYMBOL(XnorConvI32HwioCpu);     // "xnorjax_xnor_conv_i32_hwio"
XLA_FFI_DECLARE_HANDLER_SYMBOL(XnorConvF32HwioCpu);     // "xnorjax_xnor_conv_f32_hwio"
XLA_FFI_DECLARE_HANDLER_SYMBOL(XnorConvPackedHwioCpu);  // "xnorjax_xnor_conv_packed_hwio"
XLA_FFI_DECLARE_HANDLER_SYMBOL(XnorDenseI32KnCpu);       // "xnorjax_xnor_dense_i32_kn"
XLA_FFI_DECLARE_HANDLER_SYMBOL(XnorDenseF32KnCpu);       // "xnorjax_xnor_dense_f32_kn"
XLA_FFI_DECLARE_HANDLER_SYMBOL(XnorDensePackedKnCpu);    // "xnorjax_xnor_dense_packed_kn"

}  // namespace xnorjax
