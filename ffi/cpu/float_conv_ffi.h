// XLA FFI handlers of the float32 training convs on the CPU (cpu/float_conv.h, cpu/winograd.h);
// the operands, attributes and results are documented in xnorjax/ops/float_conv.py and
// xnorjax/ops/winograd.py.
#pragma once

#include "xla/ffi/api/ffi.h"

namespace xnorjax {

XLA_FFI_DECLARE_HANDLER_SYMBOL(FloatConvCpu);            // "xnorjax_float_conv"
XLA_FFI_DECLARE_HANDLER_SYMBOL(FloatConvKernelGradCpu);  // "xnorjax_float_conv_kernel_grad"
XLA_FFI_DECLARE_HANDLER_SYMBOL(WinogradConvCpu);         // "xnorjax_winograd_conv"
XLA_FFI_DECLARE_HANDLER_SYMBOL(WinogradKernelGradCpu);   // "xnorjax_winograd_kernel_grad"

}  // namespace xnorjax
