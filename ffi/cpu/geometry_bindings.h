// Registers xnorjax._ffi.geometry: the functions of ffi/conv_geometry.h, callable from Python.
#pragma once

#include <nanobind/nanobind.h>

namespace xnorjax {

void BindGeometry(nanobind::module_& parent);

}  // namespace xnorjax
