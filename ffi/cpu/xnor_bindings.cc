#include "cpu/xnor_bindings.h"

#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "conv_geometry.h"
#include "cpu/float_conv.h"
#include "cpu/parallel_for.h"
#include "cpu/popcount_ceiling.h"
#include "cpu/xnor_kernels.h"

namespace nb = nanobind;

namespace xnorjax {
namespace {

using Packed4 = nb::ndarray<const uint32_t, nb::ndim<4>, nb::c_contig, nb::device::cpu>;
using Vector = nb::ndarray<const float, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using Out4 = nb::ndarray<nb::ndim<4>, nb::c_contig, nb::device::cpu>;

// Runs the same validation and engine as the FFI handlers, on numpy arrays, with `num_threads`
// std::threads. Raises ValueError on invalid input.
void ConvInto(Packed4 x, Packed4 w, Vector scale, Vector bias, Out4 out, const std::string& output,
              int64_t channels, int64_t stride_h, int64_t stride_w, int64_t pad_top,
              int64_t pad_bottom, int64_t pad_left, int64_t pad_right, int64_t pad_value,
              int64_t impl, int64_t num_threads, bool w_input_major) {
  XnorOutput kind;
  if (output == "int32" && out.dtype() == nb::dtype<int32_t>()) {
    kind = XnorOutput::kInt32;
  } else if (output == "float32" && out.dtype() == nb::dtype<float>()) {
    kind = XnorOutput::kFloat32;
  } else if (output == "packed" && out.dtype() == nb::dtype<uint32_t>()) {
    kind = XnorOutput::kPacked;
  } else {
    throw std::invalid_argument("output must be int32, float32 or packed with a matching out dtype");
  }
  if (!ImplSupported(impl)) throw std::invalid_argument("impl not supported on this CPU");
  // w: u32[O, KH, KW, Cw] (the FFI contract) or, input-major, u32[KH, KW, Cw, O].
  const size_t w_words = w.shape(w_input_major ? 2 : 3);
  if (w_words != x.shape(3)) throw std::invalid_argument("x and w words differ");
  ConvProblem p;
  p.batch = x.shape(0);
  p.height = x.shape(1);
  p.width = x.shape(2);
  p.words = x.shape(3);
  p.channels = channels;
  p.out_channels = w.shape(w_input_major ? 3 : 0);
  p.kernel_h = w.shape(w_input_major ? 0 : 1);
  p.kernel_w = w.shape(w_input_major ? 1 : 2);
  p.stride_h = stride_h;
  p.stride_w = stride_w;
  p.pad_top = pad_top;
  p.pad_bottom = pad_bottom;
  p.pad_left = pad_left;
  p.pad_right = pad_right;
  p.pad_value = pad_value;
  if (std::string error = ValidateConvProblem(&p); !error.empty()) {
    throw std::invalid_argument(error);
  }
  const int64_t width =
      kind == XnorOutput::kPacked ? geometry::PackedWords(p.out_channels) : p.out_channels;
  if (out.shape(0) != static_cast<size_t>(p.batch) || out.shape(1) != static_cast<size_t>(p.out_h) ||
      out.shape(2) != static_cast<size_t>(p.out_w) || out.shape(3) != static_cast<size_t>(width)) {
    throw std::invalid_argument("out has the wrong shape");
  }
  if (kind != XnorOutput::kInt32 && (scale.shape(0) != static_cast<size_t>(p.out_channels) ||
                                     bias.shape(0) != static_cast<size_t>(p.out_channels))) {
    throw std::invalid_argument("scale and bias must have one entry per output channel");
  }
  nb::gil_scoped_release release;
  RunXnorConv(p, w_input_major ? WeightLayout::kInputMajor : WeightLayout::kOutputMajor,
              ResolveImpl(impl), kind, x.data(), w.data(), scale.data(), bias.data(),
              out.data(), num_threads,
              [](int64_t n, int64_t use, const std::function<void(int64_t)>& body) {
                ParallelForOnThreads(use, n, body);
              });
}

}  // namespace

void BindXnor(nb::module_& parent) {
  nb::module_ m = parent.def_submodule("xnor", "The CPU XNOR-popcount engine outside XLA");
  m.def("cpu_features", []() {
    nb::dict features;
    features["avx512_vpopcntdq"] = CpuHasAvx512Vpopcntdq();
    features["avx2"] = CpuHasAvx2();
    features["avx512f"] = FloatConvSupported();  // the float32 training convs (float_conv.h)
    return features;
  });
  // The codes of the `impl` attribute by ISA name (xnorjax.ops.implementations.ISAS).
  nb::dict isa_codes;
  isa_codes["auto"] = static_cast<int64_t>(XnorImpl::kAuto);
  isa_codes["avx512"] = static_cast<int64_t>(XnorImpl::kAvx512);
  isa_codes["avx2"] = static_cast<int64_t>(XnorImpl::kAvx2);
  isa_codes["portable"] = static_cast<int64_t>(XnorImpl::kPortable);
  m.attr("ISA_CODES") = isa_codes;
  m.def("auto_isa", []() { return static_cast<int64_t>(ResolveImpl(0)); },
        "The ISA code that ISA_CODES['auto'] dispatches to on this CPU");
  m.def("isa_supported", &ImplSupported, nb::arg("code"),
        "Whether this CPU runs the kernel of an ISA code (ISA_CODES['auto'] always)");
  m.def("popcount_ceiling", &PopcountCeiling, nb::arg("threads"), nb::arg("seconds"),
        nb::call_guard<nb::gil_scoped_release>(),
        "bit-MACs/s of XOR + VPOPCNTQ + add on 512-bit registers on `threads` threads (0: no "
        "AVX-512 VPOPCNTDQ)");
  m.def("conv_into", &ConvInto, nb::arg("x"), nb::arg("w"), nb::arg("scale"), nb::arg("bias"),
        nb::arg("out"), nb::arg("output"), nb::arg("channels"), nb::arg("stride_h"),
        nb::arg("stride_w"), nb::arg("pad_top"), nb::arg("pad_bottom"), nb::arg("pad_left"),
        nb::arg("pad_right"), nb::arg("pad_value"), nb::arg("impl"), nb::arg("num_threads"),
        nb::arg("w_input_major") = false,
        "Test-only: runs the conv engine into the caller's (poisoned) numpy buffer `out`");
}

}  // namespace xnorjax
