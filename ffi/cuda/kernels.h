// The CUDA FFI handlers of xnorjax (registered for platform "CUDA" by xnorjax._ffi_cuda).
#pragma once

#include "xla/ffi/api/ffi.h"

namespace xnorjax {

XLA_FFI_DECLARE_HANDLER_SYMBOL(PackBitsCuda);  // "xnorjax_pack_bits", as ffi/cpu/pack_bits.h

// Packed XNOR-popcount conv and dense (ffi/cuda/xnor_conv.cu), the CUDA twins of the CPU targets
// "xnorjax_xnor_{conv,dense}_{i32,f32,packed}": same operands, attributes and result, plus a last
// result u8[ScratchBytes(...)] (ffi/cuda/xnor_shape.h), the tensor-core path's scratch, which XLA
// allocates (its FFI scratch allocator gave nothing on an H200).
XLA_FFI_DECLARE_HANDLER_SYMBOL(XnorConvI32Cuda);
XLA_FFI_DECLARE_HANDLER_SYMBOL(XnorConvF32Cuda);
XLA_FFI_DECLARE_HANDLER_SYMBOL(XnorConvPackedCuda);
XLA_FFI_DECLARE_HANDLER_SYMBOL(XnorDenseI32Cuda);
XLA_FFI_DECLARE_HANDLER_SYMBOL(XnorDenseF32Cuda);
XLA_FFI_DECLARE_HANDLER_SYMBOL(XnorDensePackedCuda);
// The same with the weights in the public packed layout, as the CPU-only targets of that name:
// "xnorjax_xnor_conv_{i32,f32,packed}_hwio" (w u32[KH, KW, Cw, O]) and
// "xnorjax_xnor_dense_{i32,f32,packed}_kn" (w u32[Kw, N]); no weight transpose per call.
XLA_FFI_DECLARE_HANDLER_SYMBOL(XnorConvI32CudaInputMajor);
XLA_FFI_DECLARE_HANDLER_SYMBOL(XnorConvF32CudaInputMajor);
XLA_FFI_DECLARE_HANDLER_SYMBOL(XnorConvPackedCudaInputMajor);
XLA_FFI_DECLARE_HANDLER_SYMBOL(XnorDenseI32CudaInputMajor);
XLA_FFI_DECLARE_HANDLER_SYMBOL(XnorDenseF32CudaInputMajor);
XLA_FFI_DECLARE_HANDLER_SYMBOL(XnorDensePackedCudaInputMajor);

namespace cuda {
// 1 if the current device runs the sm_90a build of the kernels (wgmma available to impl=102),
// 0 if another build, -1 on a CUDA error. Initializes CUDA: call it only where a GPU is expected.
int WgmmaCompiledForDevice();
}  // namespace cuda

}  // namespace xnorjax
