#include "cpu/float_conv_ffi.h"

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "cpu/float_conv.h"
#include "cpu/parallel_for.h"
#include "cpu/winograd.h"
#include "ffi_common.h"

namespace xnorjax {
namespace {

using F32 = ffi::Buffer<ffi::F32>;

std::string Shape(ffi::Span<const int64_t> dims) { return "f32" + Dims(dims); }

// The problem of x f32[N, H, W, C] with a KH x KW x C x O kernel; checks the shapes and the CPU.
ffi::Error Problem(const char* target, ffi::Span<const int64_t> x, int64_t kh, int64_t kw,
                   int64_t c, int64_t o, int64_t pt, int64_t pb, int64_t pl, int64_t pr,
                   FloatConvProblem* p) {
  const std::string prefix = std::string(target) + ": ";
  if (!FloatConvSupported()) return InvalidArgument(prefix + "this CPU lacks AVX-512F");
  if (x.size() != 4) return InvalidArgument(prefix + "x must be f32[N, H, W, C], got " + Shape(x));
  if (c != x[3]) {
    return InvalidArgument(prefix + "x has " + std::to_string(x[3]) + " channels, the kernel " +
                           std::to_string(c));
  }
  *p = FloatConvProblem{x[0], x[1], x[2], x[3], o, kh, kw, pt, pb, pl, pr};
  if (std::string error = ValidateFloatConvProblem(p); !error.empty()) {
    return InvalidArgument(prefix + error);
  }
  return ffi::Error::Success();
}

ffi::Error CheckDims(const char* target, const char* name, ffi::Span<const int64_t> got,
                     std::initializer_list<int64_t> want) {
  if (got.size() != want.size() || !std::equal(want.begin(), want.end(), got.begin())) {
    std::vector<int64_t> w(want);
    return InvalidArgument(std::string(target) + ": " + name + " must be " +
                           Shape(ffi::Span<const int64_t>(w.data(), w.size())) + ", got " +
                           Shape(got));
  }
  return ffi::Error::Success();
}

using Runner = void (*)(const FloatConvProblem&, const float*, const float*, float*, int64_t,
                        const ParallelFor&);

// Runs `run(p, a, b, out)` once `problem` (the status of setting up p) succeeded and the operand
// or result `name` has the conv's output shape f32[N, Ho, Wo, O].
ffi::Error RunChecked(const char* target, const ffi::Error& problem, const FloatConvProblem& p,
                      const char* name, ffi::Span<const int64_t> output_like, Runner run,
                      const float* a, const float* b, float* out, ffi::ThreadPool& pool) {
  if (problem.failure()) return problem;
  if (auto e = CheckDims(target, name, output_like, {p.batch, p.out_h, p.out_w, p.out_channels});
      e.failure()) {
    return e;
  }
  run(p, a, b, out, pool.num_threads(), ParallelForOf(pool));
  return ffi::Error::Success();
}

ffi::Error Conv(ffi::ThreadPool pool, F32 x, F32 k, ffi::ResultBuffer<ffi::F32> y, int64_t pt,
                int64_t pb, int64_t pl, int64_t pr) {
  constexpr const char* kTarget = "xnorjax_float_conv";
  const auto kd = k.dimensions();
  if (kd.size() != 4) {
    return InvalidArgument(std::string(kTarget) + ": k must be f32[KH, KW, C, O]");
  }
  FloatConvProblem p;
  const ffi::Error problem =
      Problem(kTarget, x.dimensions(), kd[0], kd[1], kd[2], kd[3], pt, pb, pl, pr, &p);
  return RunChecked(kTarget, problem, p, "the result", y->dimensions(), RunFloatConv,
                    x.typed_data(), k.typed_data(), y->typed_data(), pool);
}

ffi::Error KernelGrad(ffi::ThreadPool pool, F32 x, F32 g, ffi::ResultBuffer<ffi::F32> dk,
                      int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  constexpr const char* kTarget = "xnorjax_float_conv_kernel_grad";
  const auto kd = dk->dimensions();
  if (kd.size() != 4) {
    return InvalidArgument(std::string(kTarget) + ": the result must be f32[KH, KW, C, O]");
  }
  FloatConvProblem p;
  const ffi::Error problem =
      Problem(kTarget, x.dimensions(), kd[0], kd[1], kd[2], kd[3], pt, pb, pl, pr, &p);
  return RunChecked(kTarget, problem, p, "g", g.dimensions(), RunFloatConvKernelGrad,
                    x.typed_data(), g.typed_data(), dk->typed_data(), pool);
}

// The problem of x with a 3x3 kernel whose Winograd transform is f32[36, C, O] (dims `u`).
ffi::Error WinogradProblem(const char* target, const char* u_name, ffi::Span<const int64_t> x,
                           ffi::Span<const int64_t> u, int64_t pt, int64_t pb, int64_t pl,
                           int64_t pr, FloatConvProblem* p) {
  if (u.size() != 3 || u[0] != kWinogradPoints) {
    return InvalidArgument(std::string(target) + ": " + u_name + " must be f32[36, C, O], got " +
                           Shape(u));
  }
  if (auto e = Problem(target, x, 3, 3, u[1], u[2], pt, pb, pl, pr, p); e.failure()) return e;
  if (std::string error = ValidateWinogradProblem(p); !error.empty()) {
    return InvalidArgument(std::string(target) + ": " + error);
  }
  return ffi::Error::Success();
}

ffi::Error WinogradConv(ffi::ThreadPool pool, F32 x, F32 u, ffi::ResultBuffer<ffi::F32> y,
                        int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  constexpr const char* kTarget = "xnorjax_winograd_conv";
  FloatConvProblem p;
  const ffi::Error problem =
      WinogradProblem(kTarget, "u", x.dimensions(), u.dimensions(), pt, pb, pl, pr, &p);
  return RunChecked(kTarget, problem, p, "the result", y->dimensions(), RunWinogradConv,
                    x.typed_data(), u.typed_data(), y->typed_data(), pool);
}

ffi::Error WinogradKernelGrad(ffi::ThreadPool pool, F32 x, F32 g, ffi::ResultBuffer<ffi::F32> du,
                              int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  constexpr const char* kTarget = "xnorjax_winograd_kernel_grad";
  FloatConvProblem p;
  const ffi::Error problem = WinogradProblem(kTarget, "the result", x.dimensions(),
                                             du->dimensions(), pt, pb, pl, pr, &p);
  return RunChecked(kTarget, problem, p, "g", g.dimensions(), RunWinogradKernelGrad,
                    x.typed_data(), g.typed_data(), du->typed_data(), pool);
}

template <typename Binding>
auto PadAttrsOf(Binding binding) {
  return std::move(binding)
      .template Attr<int64_t>("pad_top")
      .template Attr<int64_t>("pad_bottom")
      .template Attr<int64_t>("pad_left")
      .template Attr<int64_t>("pad_right");
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(FloatConvCpu, Conv,
                              PadAttrsOf(ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<F32>()
                                             .Arg<F32>().Ret<F32>()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(FloatConvKernelGradCpu, KernelGrad,
                              PadAttrsOf(ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<F32>()
                                             .Arg<F32>().Ret<F32>()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(WinogradConvCpu, WinogradConv,
                              PadAttrsOf(ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<F32>()
                                             .Arg<F32>().Ret<F32>()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(WinogradKernelGradCpu, WinogradKernelGrad,
                              PadAttrsOf(ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<F32>()
                                             .Arg<F32>().Ret<F32>()));

}  // namespace xnorjax
