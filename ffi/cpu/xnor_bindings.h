// Python exposure of the CPU XNOR engine outside XLA (xnorjax._ffi.xnor): CPU feature detection
// and a test-only entry point that runs the engine on caller-provided numpy buffers, so tests can
// poison the output first and catch any element the kernel fails to write.
#pragma once

#include <nanobind/nanobind.h>

namespace xnorjax {

void BindXnor(nanobind::module_& parent);

}  // namespace xnorjax
