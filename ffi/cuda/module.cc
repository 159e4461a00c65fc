// The nanobind module xnorjax._ffi_cuda: the CUDA FFI handlers as capsules, which xnorjax
// registers for platform "CUDA". Built only when CMake finds a CUDA compiler.
#include <nanobind/nanobind.h>

#include "cuda/kernels.h"
#include "nb_capsule.h"

namespace nb = nanobind;

NB_MODULE(_ffi_cuda, m) {
  m.doc() = "xnorjax CUDA kernels as XLA FFI handlers";
  m.def("registrations", []() {
    nb::dict registrations;
    registrations["xnorjax_pack_bits"] = xnorjax::EncapsulateFfiHandler(xnorjax::PackBitsCuda);
    return registrations;
  });
}
