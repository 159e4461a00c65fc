#include "cpu/xnor_ffi.h"

#include <cstdint>
#include <string>

#include "conv_geometry.h"
#include "cpu/parallel_for.h"
#include "cpu/xnor_kernels.h"
#include "ffi_common.h"

namespace xnorjax {
namespace {

using U32 = ffi::Buffer<ffi::U32>;
using F32 = ffi::Buffer<ffi::F32>;

// Checks what is common to every target (impl, scale / bias shapes, output shape) and runs.
template <XnorOutput kOutput, typename OutBuffer>
ffi::Error Run(const char* target, ffi::ThreadPool& pool, ConvProblem problem,
               WeightLayout layout, int64_t impl,
               const uint32_t* x, const uint32_t* w, const F32* scale, const F32* bias,
               OutBuffer& out, ffi::Span<const int64_t> want_out_dims) {
  const std::string prefix = std::string(target) + ": ";
  if (!ImplSupported(impl)) {
    return InvalidArgument(prefix + "impl=" + std::to_string(impl) +
                           " is not 0 (auto), 1 (AVX-512 VPOPCNTDQ), 2 (AVX2) or 3 (portable), "
                           "or this CPU cannot run it");
  }
  if (std::string error = ValidateConvProblem(&problem); !error.empty()) {
    return InvalidArgument(prefix + error);
  }
  if (scale != nullptr) {
    for (const F32* v : {scale, bias}) {
      if (v->dimensions().size() != 1 || v->dimensions()[0] != problem.out_channels) {
        return InvalidArgument(prefix + "scale and bias must be f32[" +
                               std::to_string(problem.out_channels) + "], got " +
                               Dims(v->dimensions()));
      }
    }
  }
  auto out_dims = out->dimensions();
  if (out_dims.size() != want_out_dims.size() ||
      !std::equal(out_dims.begin(), out_dims.end(), want_out_dims.begin())) {
    return InvalidArgument(prefix + "the result must have shape " + Dims(want_out_dims) +
                           ", got " + Dims(out_dims));
  }
  const int64_t threads = pool.num_threads();
  RunXnorConv(problem, layout, ResolveImpl(impl), kOutput, x, w,
              scale ? scale->typed_data() : nullptr, bias ? bias->typed_data() : nullptr,
              out->untyped_data(), threads, ParallelForOf(pool));
  return ffi::Error::Success();
}

int64_t OutWidth(XnorOutput output, int64_t channels) {
  return output == XnorOutput::kPacked ? geometry::PackedWords(channels) : channels;
}

template <XnorOutput kOutput, typename OutBuffer>
ffi::Error Conv(const char* target, WeightLayout layout, ffi::ThreadPool pool, U32 x, U32 w,
                const F32* scale,
                const F32* bias, OutBuffer out, int64_t channels, int64_t stride_h,
                int64_t stride_w, int64_t pad_top, int64_t pad_bottom, int64_t pad_left,
                int64_t pad_right, int64_t pad_value, int64_t impl) {
  const std::string prefix = std::string(target) + ": ";
  const auto xd = x.dimensions();
  const auto wd = w.dimensions();
  if (xd.size() != 4) return InvalidArgument(prefix + "x must be u32[N, H, W, Cw], got " + Dims(xd));
  const bool input_major = layout == WeightLayout::kInputMajor;
  if (wd.size() != 4) {
    return InvalidArgument(prefix + "w must be u32[" +
                           (input_major ? "KH, KW, Cw, O" : "O, KH, KW, Cw") + "], got " + Dims(wd));
  }
  const int64_t w_words = input_major ? wd[2] : wd[3];
  if (w_words != xd[3]) {
    return InvalidArgument(prefix + "x has " + std::to_string(xd[3]) + " words per pixel but w has " +
                           std::to_string(w_words));
  }
  ConvProblem p;
  p.batch = xd[0];
  p.height = xd[1];
  p.width = xd[2];
  p.words = xd[3];
  p.channels = channels;
  p.out_channels = input_major ? wd[3] : wd[0];
  p.kernel_h = input_major ? wd[0] : wd[1];
  p.kernel_w = input_major ? wd[1] : wd[2];
  p.stride_h = stride_h;
  p.stride_w = stride_w;
  p.pad_top = pad_top;
  p.pad_bottom = pad_bottom;
  p.pad_left = pad_left;
  p.pad_right = pad_right;
  p.pad_value = pad_value;
  ConvProblem shape = p;
  if (std::string error = ValidateConvProblem(&shape); !error.empty()) {
    return InvalidArgument(prefix + error);
  }
  const int64_t want[4] = {p.batch, shape.out_h, shape.out_w, OutWidth(kOutput, p.out_channels)};
  return Run<kOutput>(target, pool, p, layout, impl, x.typed_data(), w.typed_data(), scale, bias,
                      out, ffi::Span<const int64_t>(want, 4));
}

template <XnorOutput kOutput, typename OutBuffer>
ffi::Error Dense(const char* target, WeightLayout layout, ffi::ThreadPool pool, U32 x, U32 w,
                 const F32* scale,
                 const F32* bias, OutBuffer out, int64_t features, int64_t impl) {
  const std::string prefix = std::string(target) + ": ";
  const auto xd = x.dimensions();
  const auto wd = w.dimensions();
  if (xd.size() != 2) return InvalidArgument(prefix + "x must be u32[M, Kw], got " + Dims(xd));
  const bool input_major = layout == WeightLayout::kInputMajor;
  if (wd.size() != 2) {
    return InvalidArgument(prefix + "w must be u32[" + (input_major ? "Kw, N" : "N, Kw") +
                           "], got " + Dims(wd));
  }
  const int64_t w_words = input_major ? wd[0] : wd[1];
  if (w_words != xd[1]) {
    return InvalidArgument(prefix + "x has " + std::to_string(xd[1]) + " words per row but w has " +
                           std::to_string(w_words));
  }
  ConvProblem p;
  p.batch = xd[0];
  p.height = p.width = p.kernel_h = p.kernel_w = 1;
  p.words = xd[1];
  p.channels = features;
  p.out_channels = input_major ? wd[1] : wd[0];
  const int64_t want[2] = {p.batch, OutWidth(kOutput, p.out_channels)};
  return Run<kOutput>(target, pool, p, layout, impl, x.typed_data(), w.typed_data(), scale, bias,
                      out, ffi::Span<const int64_t>(want, 2));
}

// [output kind][weights input-major]
constexpr const char* kConvNames[3][2] = {
    {"xnorjax_xnor_conv_i32", "xnorjax_xnor_conv_i32_hwio"},
    {"xnorjax_xnor_conv_f32", "xnorjax_xnor_conv_f32_hwio"},
    {"xnorjax_xnor_conv_packed", "xnorjax_xnor_conv_packed_hwio"}};
constexpr const char* kDenseNames[3][2] = {
    {"xnorjax_xnor_dense_i32", "xnorjax_xnor_dense_i32_kn"},
    {"xnorjax_xnor_dense_f32", "xnorjax_xnor_dense_f32_kn"},
    {"xnorjax_xnor_dense_packed", "xnorjax_xnor_dense_packed_kn"}};

// The operands every target takes, packed input and packed weights; the epilogue targets add
// the per-channel scale and bias.
auto BindInputs() { return ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<U32>().Arg<U32>(); }
auto BindInputsScaleBias() { return BindInputs().Arg<F32>().Arg<F32>(); }

template <WeightLayout kLayout>
ffi::Error ConvI32(ffi::ThreadPool pool, U32 x, U32 w, ffi::ResultBuffer<ffi::S32> out,
                   int64_t channels, int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl,
                   int64_t pr, int64_t pv, int64_t impl) {
  return Conv<XnorOutput::kInt32>(kConvNames[0][kLayout == WeightLayout::kInputMajor], kLayout,
                                  pool, x, w, nullptr, nullptr, out, channels, sh, sw, pt, pb, pl,
                                  pr, pv, impl);
}
template <WeightLayout kLayout>
ffi::Error ConvF32(ffi::ThreadPool pool, U32 x, U32 w, F32 scale, F32 bias,
                   ffi::ResultBuffer<ffi::F32> out, int64_t channels, int64_t sh, int64_t sw,
                   int64_t pt, int64_t pb, int64_t pl, int64_t pr, int64_t pv, int64_t impl) {
  return Conv<XnorOutput::kFloat32>(kConvNames[1][kLayout == WeightLayout::kInputMajor], kLayout,
                                    pool, x, w, &scale, &bias, out, channels, sh, sw, pt, pb, pl,
                                    pr, pv, impl);
}
template <WeightLayout kLayout>
ffi::Error ConvPacked(ffi::ThreadPool pool, U32 x, U32 w, F32 scale, F32 bias,
                      ffi::ResultBuffer<ffi::U32> out, int64_t channels, int64_t sh, int64_t sw,
                      int64_t pt, int64_t pb, int64_t pl, int64_t pr, int64_t pv, int64_t impl) {
  return Conv<XnorOutput::kPacked>(kConvNames[2][kLayout == WeightLayout::kInputMajor], kLayout,
                                   pool, x, w, &scale, &bias, out, channels, sh, sw, pt, pb, pl,
                                   pr, pv, impl);
}
template <WeightLayout kLayout>
ffi::Error DenseI32(ffi::ThreadPool pool, U32 x, U32 w, ffi::ResultBuffer<ffi::S32> out,
                    int64_t features, int64_t impl) {
  return Dense<XnorOutput::kInt32>(kDenseNames[0][kLayout == WeightLayout::kInputMajor], kLayout,
                                   pool, x, w, nullptr, nullptr, out, features, impl);
}
template <WeightLayout kLayout>
ffi::Error DenseF32(ffi::ThreadPool pool, U32 x, U32 w, F32 scale, F32 bias,
                    ffi::ResultBuffer<ffi::F32> out, int64_t features, int64_t impl) {
  return Dense<XnorOutput::kFloat32>(kDenseNames[1][kLayout == WeightLayout::kInputMajor],
                                     kLayout, pool, x, w, &scale, &bias, out, features, impl);
}
template <WeightLayout kLayout>
ffi::Error DensePacked(ffi::ThreadPool pool, U32 x, U32 w, F32 scale, F32 bias,
                       ffi::ResultBuffer<ffi::U32> out, int64_t features, int64_t impl) {
  return Dense<XnorOutput::kPacked>(kDenseNames[2][kLayout == WeightLayout::kInputMajor], kLayout,
                                    pool, x, w, &scale, &bias, out, features, impl);
}

}  // namespace

// The contract's targets (weights output-major) and the "_hwio" / "_kn" targets (weights in the
// public packed layout), which differ only in how the weights are read.
#define XNORJAX_CPU_HANDLERS(CONV, DENSE, LAYOUT)                                                  \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(XnorConvI32##CONV##Cpu, ConvI32<LAYOUT>,                           \
                                ConvAttrsOf(BindInputs().Ret<ffi::Buffer<ffi::S32>>()));           \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(XnorConvF32##CONV##Cpu, ConvF32<LAYOUT>,                           \
                                ConvAttrsOf(BindInputsScaleBias().Ret<ffi::Buffer<ffi::F32>>()));  \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(XnorConvPacked##CONV##Cpu, ConvPacked<LAYOUT>,                     \
                                ConvAttrsOf(BindInputsScaleBias().Ret<ffi::Buffer<ffi::U32>>()));  \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(XnorDenseI32##DENSE##Cpu, DenseI32<LAYOUT>,                        \
                                DenseAttrsOf(BindInputs().Ret<ffi::Buffer<ffi::S32>>()));          \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(XnorDenseF32##DENSE##Cpu, DenseF32<LAYOUT>,                        \
                                DenseAttrsOf(BindInputsScaleBias().Ret<ffi::Buffer<ffi::F32>>())); \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(XnorDensePacked##DENSE##Cpu, DensePacked<LAYOUT>,                  \
                                DenseAttrsOf(BindInputsScaleBias().Ret<ffi::Buffer<ffi::U32>>()));

XNORJAX_CPU_HANDLERS(, , WeightLayout::kOutputMajor)
XNORJAX_CPU_HANDLERS(Hwio, Kn, WeightLayout::kInputMajor)
#undef XNORJAX_CPU_HANDLERS

}  // namespace xnorjax
