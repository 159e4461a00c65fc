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
  m.def(
      "scratch_bytes",
      [](int64_t batch, int64_t in_h, int64_t in_w, int64_t in_words, int64_t kernel_h,
         int64_t kernel_w, int64_t out_channels) {
        return xnorjax::cuda::ScratchBytes(batch, in_h, in_w, in_words, kernel_h, kernel_w,
                                           out_channels);
      },
      nb::arg("batch"), nb::arg("in_h"), nb::arg("in_w"), nb::arg("in_words"),
      nb::arg("kernel_h"), nb::arg("kernel_w"), nb::arg("out_channels"),
      "Bytes of the scratch result (the custom call's last result) of a conv on u32[N, H, W, Cw] "
      "with an [KH, KW] kernel and O output channels (a dense layer: H = W = KH = KW = 1).");
  m.def("wgmma_compiled_for_device", &xnorjax::cuda::WgmmaCompiledForDevice,
        "1 if the current GPU runs the sm_90a build (impl=IMPL_WGMMA uses wgmma), 0 if not, "
        "-1 on a CUDA error. Initializes CUDA.");
}
