// Bit packing on NVIDIA GPUs: the CUDA twin of ffi/cpu/pack_bits.cc, same encoding
// (bit 1 for x >= 0, value j -> bit j % 32 of word j / 32, zero tail bits).
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/kernels.h"
#include "ffi_common.h"

namespace xnorjax {
namespace {

// One warp packs 32 consecutive values of a row with a ballot: lane b supplies bit b.
__global__ void PackBitsKernel(const float* __restrict__ x, int64_t rows, int64_t n, int64_t words,
                               uint32_t* __restrict__ out) {
  const int lane = threadIdx.x & 31;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int64_t total_words = rows * words;
  const int64_t warps = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
  for (int64_t w = warp; w < total_words; w += warps) {
    const int64_t row = w / words, word = w % words;
    const int64_t j = word * 32 + lane;
    const bool bit = j < n && x[row * n + j] >= 0.0f;
    const uint32_t packed = __ballot_sync(0xffffffffu, bit);
    if (lane == 0) out[w] = packed;
  }
}

ffi::Error PackBitsCudaImpl(cudaStream_t stream, ffi::Buffer<ffi::F32> x,
                            ffi::ResultBuffer<ffi::U32> out) {
  int64_t rows = 0, n = 0, words = 0;
  if (ffi::Error error = PackedRowsShape(x.dimensions(), out->dimensions(), rows, n, words);
      error.failure()) {
    return error;
  }
  const int64_t total_words = rows * words;
  if (total_words == 0) return ffi::Error::Success();
  constexpr int kThreads = 256;
  const int64_t blocks64 = (total_words * 32 + kThreads - 1) / kThreads;
  const int blocks = static_cast<int>(blocks64 < 65535 ? blocks64 : 65535);
  PackBitsKernel<<<blocks, kThreads, 0, stream>>>(x.typed_data(), rows, n, words,
                                                 out->typed_data());
  const cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess) {
    return ffi::Error(ffi::ErrorCode::kInternal, cudaGetErrorString(status));
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(PackBitsCuda, PackBitsCudaImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::U32>>());

}  // namespace xnorjax
