// Python exposure of the float32 training convs outside XLA (xnorjax._ffi.float_conv): a
// test-only entry point that runs the direct and Winograd convs and kernel gradients on numpy
// buffers with a chosen number of std::threads, so tests can check that the results do not
// depend on the thread count (XLA's pool has as many threads as the machine has cores).
#pragma once

#include <nanobind/nanobind.h>

namespace xnorjax {

void BindFloatConv(nanobind::module_& parent);

}  // namespace xnorjax
