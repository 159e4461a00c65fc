#include "cpu/float_conv_bindings.h"

#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/float_conv.h"
#include "cpu/parallel_for.h"
#include "cpu/winograd.h"
#include "ffi_common.h"

namespace nb = nanobind;

namespace xnorjax {
namespace {

using Array = nb::ndarray<const float, nb::c_contig, nb::device::cpu>;
using Out = nb::ndarray<float, nb::c_contig, nb::device::cpu>;

std::string ShapeOf(const std::vector<int64_t>& dims) {
  return "f32" + Dims(ffi::Span<const int64_t>(dims.data(), dims.size()));
}

template <typename A>
void CheckShape(const char* name, const A& a, const std::vector<int64_t>& want) {
  std::vector<int64_t> got;
  for (size_t d = 0; d < a.ndim(); ++d) got.push_back(static_cast<int64_t>(a.shape(d)));
  if (got != want) {
    throw std::invalid_argument(std::string(name) + " must be " + ShapeOf(want) + ", got " +
                                ShapeOf(got));
  }
}

using Runner = void (*)(const FloatConvProblem&, const float*, const float*, float*, int64_t,
                        const ParallelFor&);

// The engines run_into offers: the direct and Winograd convs and kernel gradients.
struct Engine {
  const char* op;
  Runner run;
  bool winograd, grad;
};
constexpr Engine kEngines[] = {
    {"conv", RunFloatConv, false, false},
    {"kernel_grad", RunFloatConvKernelGrad, false, true},
    {"winograd_conv", RunWinogradConv, true, false},
    {"winograd_kernel_grad", RunWinogradKernelGrad, true, true},
};

// Runs `op` ("conv", "kernel_grad", "winograd_conv" or "winograd_kernel_grad") on x
// f32[N, H, W, C] and b (the kernel f32[KH, KW, C, O], the output gradient f32[N, Ho, Wo, O], or
// the transformed kernel f32[36, C, O]) into `out`, with the same validation and engine as the
// FFI handlers, on `num_threads` std::threads. `kernel_h`, `kernel_w` and `out_channels` give the
// kernel's shape where no operand holds it. Raises ValueError on invalid input.
void RunInto(const std::string& op, Array x, Array b, Out out, int64_t kernel_h,
             int64_t kernel_w, int64_t out_channels, int64_t pad_top, int64_t pad_bottom,
             int64_t pad_left, int64_t pad_right, int64_t num_threads) {
  const Engine* engine = nullptr;
  for (const Engine& e : kEngines) {
    if (op == e.op) engine = &e;
  }
  if (engine == nullptr) {
    throw std::invalid_argument(
        "op must be conv, kernel_grad, winograd_conv or winograd_kernel_grad, got " + op);
  }
  const bool winograd = engine->winograd, grad = engine->grad;
  if (!FloatConvSupported()) throw std::invalid_argument("this CPU lacks AVX-512F");
  if (num_threads < 1) throw std::invalid_argument("num_threads must be at least 1");
  if (x.ndim() != 4) throw std::invalid_argument("x must be f32[N, H, W, C]");
  const int64_t c = x.shape(3);
  FloatConvProblem p{static_cast<int64_t>(x.shape(0)), static_cast<int64_t>(x.shape(1)),
                     static_cast<int64_t>(x.shape(2)), c, out_channels, kernel_h, kernel_w,
                     pad_top, pad_bottom, pad_left, pad_right};
  std::string error = winograd ? ValidateWinogradProblem(&p) : ValidateFloatConvProblem(&p);
  if (!error.empty()) throw std::invalid_argument(error);
  const std::vector<int64_t> kernel_shape =
      winograd ? std::vector<int64_t>{kWinogradPoints, c, p.out_channels}
               : std::vector<int64_t>{p.kernel_h, p.kernel_w, c, p.out_channels};
  const std::vector<int64_t> output_shape{p.batch, p.out_h, p.out_w, p.out_channels};
  CheckShape(grad ? "g" : (winograd ? "u" : "k"), b, grad ? output_shape : kernel_shape);
  CheckShape("out", out, grad ? kernel_shape : output_shape);
  nb::gil_scoped_release release;
  engine->run(p, x.data(), b.data(), out.data(), num_threads,
      [](int64_t n, int64_t threads, const std::function<void(int64_t)>& body) {
        ParallelForOnThreads(threads, n, body);
      });
}

}  // namespace

void BindFloatConv(nb::module_& parent) {
  nb::module_ m = parent.def_submodule("float_conv", "The float32 training convs outside XLA");
  m.def("run_into", &RunInto, nb::arg("op"), nb::arg("x"), nb::arg("b"), nb::arg("out"),
        nb::arg("kernel_h"), nb::arg("kernel_w"), nb::arg("out_channels"), nb::arg("pad_top"),
        nb::arg("pad_bottom"), nb::arg("pad_left"), nb::arg("pad_right"), nb::arg("num_threads"),
        "Test-only: runs a float32 conv or kernel gradient into the caller's numpy buffer `out`");
}

}  // namespace xnorjax
