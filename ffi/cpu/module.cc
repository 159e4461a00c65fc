// The nanobind module xnorjax._ffi: the CPU FFI handlers as capsules, which xnorjax registers
// with XLA (jax.ffi.register_ffi_target) at import.
#include <nanobind/nanobind.h>

#include "cpu/geometry_bindings.h"
#include "cpu/pack_bits.h"
#include "nb_capsule.h"

namespace nb = nanobind;

NB_MODULE(_ffi, m) {
  m.doc() = "xnorjax CPU kernels as XLA FFI handlers";
  m.def("registrations", []() {
    nb::dict registrations;
    registrations["xnorjax_pack_bits"] = xnorjax::EncapsulateFfiHandler(xnorjax::PackBitsCpu);
    return registrations;
  });
  xnorjax::BindGeometry(m);
}
