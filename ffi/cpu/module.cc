// The nanobind module xnorjax._ffi: the CPU FFI handlers as capsules, which xnorjax registers
// with XLA (jax.ffi.register_ffi_target) at import.
#include <nanobind/nanobind.h>

#include "cpu/float_conv_bindings.h"
#include "cpu/float_conv_ffi.h"
#include "cpu/geometry_bindings.h"
#include "cpu/pack_bits.h"
#include "cpu/xnor_bindings.h"
#include "cpu/xnor_ffi.h"
#include "nb_capsule.h"

namespace nb = nanobind;

NB_MODULE(_ffi, m) {
  m.doc() = "xnorjax CPU kernels as XLA FFI handlers";
  m.def("registrations", []() {
    nb::dict registrations;
    registrations["xnorjax_pack_bits"] = xnorjax::EncapsulateFfiHandler(xnorjax::PackBitsCpu);
    registrations["xnorjax_xnor_conv_i32"] = xnorjax::EncapsulateFfiHandler(xnorjax::XnorConvI32Cpu);
    registrations["xnorjax_xnor_conv_f32"] = xnorjax::EncapsulateFfiHandler(xnorjax::XnorConvF32Cpu);
    registrations["xnorjax_xnor_conv_packed"] =
        xnorjax::EncapsulateFfiHandler(xnorjax::XnorConvPackedCpu);
    registrations["xnorjax_xnor_dense_i32"] =
        xnorjax::EncapsulateFfiHandler(xnorjax::XnorDenseI32Cpu);
    registrations["xnorjax_xnor_dense_f32"] =
        xnorjax::EncapsulateFfiHandler(xnorjax::XnorDenseF32Cpu);
    registrations["xnorjax_xnor_dense_packed"] =
        xnorjax::EncapsulateFfiHandler(xnorjax::XnorDensePackedCpu);
    // CPU-only: weights in their public packed layout (see cpu/xnor_ffi.h).
    registrations["xnorjax_xnor_conv_i32_hwio"] =
        xnorjax::EncapsulateFfiHandler(xnorjax::XnorConvI32HwioCpu);
    registrations["xnorjax_xnor_conv_f32_hwio"] =
        xnorjax::EncapsulateFfiHandler(xnorjax::XnorConvF32HwioCpu);
    registrations["xnorjax_xnor_conv_packed_hwio"] =
        xnorjax::EncapsulateFfiHandler(xnorjax::XnorConvPackedHwioCpu);
    registrations["xnorjax_xnor_dense_i32_kn"] =
        xnorjax::EncapsulateFfiHandler(xnorjax::XnorDenseI32KnCpu);
    registrations["xnorjax_xnor_dense_f32_kn"] =
        xnorjax::EncapsulateFfiHandler(xnorjax::XnorDenseF32KnCpu);
    registrations["xnorjax_xnor_dense_packed_kn"] =
        xnorjax::EncapsulateFfiHandler(xnorjax::XnorDensePackedKnCpu);
    // Float32 training convs (see cpu/float_conv.h, cpu/winograd.h).
    registrations["xnorjax_float_conv"] = xnorjax::EncapsulateFfiHandler(xnorjax::FloatConvCpu);
    registrations["xnorjax_float_conv_kernel_grad"] =
        xnorjax::EncapsulateFfiHandler(xnorjax::FloatConvKernelGradCpu);
    registrations["xnorjax_winograd_conv"] =
        xnorjax::EncapsulateFfiHandler(xnorjax::WinogradConvCpu);
    registrations["xnorjax_winograd_kernel_grad"] =
        xnorjax::EncapsulateFfiHandler(xnorjax::WinogradKernelGradCpu);
    return registrations;
  });
  xnorjax::BindFloatConv(m);
  xnorjax::BindGeometry(m);
  xnorjax::BindXnor(m);
}
