// The nanobind module xnorjax._ffi_cuda: the CUDA FFI handlers as capsules, which xnorjax
// registers for platform "CUDA". Built only when CMake finds a CUDA compiler.
#include <nanobind/nanobind.h>

#include "cuda/kernels.h"
#include "cuda/xnor_shape.h"
#include "nb_capsule.h"

namespace nb = nanobind;

NB_MODULE(_ffi_cuda, m) {
  m.doc() = "xnorjax CUDA kernels as XLA FFI handlers";
  m.def("registrations", []() {
    nb::dict registrations;
    registrations["xnorjax_pack_bits"] = xnorjax::EncapsulateFfiHandler(xnorjax::PackBitsCuda);
    using namespace xnorjax;  // NOLINT
    registrations["xnorjax_xnor_conv_i32"] = EncapsulateFfiHandler(XnorConvI32Cuda);
    registrations["xnorjax_xnor_conv_f32"] = EncapsulateFfiHandler(XnorConvF32Cuda);
    registrations["xnorjax_xnor_conv_packed"] = EncapsulateFfiHandler(XnorConvPackedCuda);
    registrations["xnorjax_xnor_dense_i32"] = EncapsulateFfiHandler(XnorDenseI32Cuda);
    registrations["xnorjax_xnor_dense_f32"] = EncapsulateFfiHandler(XnorDenseF32Cuda);
    registrations["xnorjax_xnor_dense_packed"] = EncapsulateFfiHandler(XnorDensePackedCuda);
    registrations["xnorjax_xnor_conv_i32_hwio"] = EncapsulateFfiHandler(XnorConvI32CudaInputMajor);
    registrations["xnorjax_xnor_conv_f32_hwio"] = EncapsulateFfiHandler(XnorConvF32CudaInputMajor);
    registrations["xnorjax_xnor_conv_packed_hwio"] =
        EncapsulateFfiHandler(XnorConvPackedCudaInputMajor);
    registrations["xnorjax_xnor_dense_i32_kn"] = EncapsulateFfiHandler(XnorDenseI32CudaInputMajor);
    registrations["xnorjax_xnor_dense_f32_kn"] = EncapsulateFfiHandler(XnorDenseF32CudaInputMajor);
    registrations["xnorjax_xnor_dense_packed_kn"] =
        EncapsulateFfiHandler(XnorDensePackedCudaInputMajor);
    return registrations;
  });
  // CUDA-only values of the `impl` attribute, which select one path (0-3 mean auto on CUDA).
  m.attr("IMPL_SIMPLE") = xnorjax::cuda::kImplSimple;
  m.attr("IMPL_MMA") = xnorjax::cuda::kImplMma;
  m.attr("IMPL_WGMMA") = xnorjax::cuda::kImplWgmma;
  m.def("wgmma_compiled_for_device", &xnorjax::cuda::WgmmaCompiledForDevice,
        "1 if the current GPU runs the sm_90a build (impl=IMPL_WGMMA uses wgmma), 0 if not, "
        "-1 on a CUDA error. Initializes CUDA.");
}
