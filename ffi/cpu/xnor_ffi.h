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

}  // namespace xnorjax
