// Python exposure of ffi/conv_geometry.h (xnorjax._ffi.geometry), so that CPU tests exercise the
// exact functions the CPU and CUDA kernels use.
#include "cpu/geometry_bindings.h"

#include <cstdint>

#include "conv_geometry.h"

namespace nb = nanobind;

namespace xnorjax {

void BindGeometry(nb::module_& parent) {
  nb::module_ m = parent.def_submodule("geometry", "ffi/conv_geometry.h, shared by CPU and CUDA");
  using namespace geometry;  // NOLINT
  m.attr("WORD_BITS") = kWordBits;
  m.def("packed_words", &PackedWords, nb::arg("bits"));
  m.def("tail_mask", &TailMask, nb::arg("bits"), nb::arg("word"));
  m.def("constant_word", &ConstantWord, nb::arg("value"), nb::arg("bits"), nb::arg("word"));
  m.def("conv_output_size", &ConvOutputSize, nb::arg("size"), nb::arg("kernel"),
        nb::arg("stride"), nb::arg("pad_lo"), nb::arg("pad_hi"));
  m.def("tap_input_index", &TapInputIndex, nb::arg("out"), nb::arg("tap"), nb::arg("stride"),
        nb::arg("pad_lo"));
  m.def("tap_inside", &TapInside, nb::arg("index"), nb::arg("size"));
  m.def("inside_tap_begin", &InsideTapBegin, nb::arg("out"), nb::arg("stride"), nb::arg("pad_lo"));
  m.def("inside_tap_end", &InsideTapEnd, nb::arg("out"), nb::arg("stride"), nb::arg("pad_lo"),
        nb::arg("size"), nb::arg("kernel"));
  m.def("all_taps_inside", &AllTapsInside, nb::arg("out"), nb::arg("stride"), nb::arg("pad_lo"),
        nb::arg("size"), nb::arg("kernel"));
  m.def("dot_from_xor_popcount", &DotFromXorPopcount, nb::arg("bits"), nb::arg("xor_popcount"));
  m.def("dot_from_and_popcount", &DotFromAndPopcount, nb::arg("bits"), nb::arg("a_popcount"),
        nb::arg("w_popcount"), nb::arg("and_popcount"));
  m.def("sum_from_popcount", &SumFromPopcount, nb::arg("bits"), nb::arg("popcount"));
  m.def("pad_correction", &PadCorrection, nb::arg("pad_value"), nb::arg("assumed_pad"),
        nb::arg("outside_weight_sum"));
  m.def("word_of_channel", &WordOfChannel, nb::arg("channel"));
  m.def("bit_of_channel", &BitOfChannel, nb::arg("channel"));
}

}  // namespace xnorjax
