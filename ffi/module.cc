// The nanobind module xnorjax._ffi: hands the CPU FFI handlers to Python as capsules,
// which xnorjax registers with XLA (jax.ffi.register_ffi_target) at import.
#include <nanobind/nanobind.h>

#include <type_traits>

#include "pack_bits.h"

namespace nb = nanobind;

namespace {

template <typename T>
nb::capsule EncapsulateFfiHandler(T* fn) {
  static_assert(std::is_invocable_r_v<XLA_FFI_Error*, T, XLA_FFI_CallFrame*>,
                "Encapsulated function must be an XLA FFI handler");
  return nb::capsule(reinterpret_cast<void*>(fn));
}

}  // namespace

NB_MODULE(_ffi, m) {
  m.doc() = "xnorjax CPU kernels as XLA FFI handlers";
  m.def("registrations", []() {
    nb::dict registrations;
    registrations["xnorjax_pack_bits"] = EncapsulateFfiHandler(xnorjax::PackBitsCpu);
    return registrations;
  });
}
