// Packed XNOR-popcount convolution and dense layers on NVIDIA GPUs: the CUDA twins of the CPU
// targets "xnorjax_xnor_{conv,dense}_{i32,f32,packed}" (same operands, attributes and results).
//
// Also the "_hwio" / "_kn" targets: the same, reading the weights in their public packed layout.
//
// Paths (ffi/cuda/xnor_plan.h holds their index arithmetic, tested on the CPU):
//  * simple: one thread per output value (per output word for _packed), XOR + __popc. Obviously
//    right; the fallback for shapes the tensor-core path does not index and the second opinion in
//    tests (impl=100).
//  * mma: implicit GEMM on the 1-bit tensor cores, mma.sync.m16n8k256 AND-popc (native on sm_80
//    and sm_90, where the XOR form is emulated at twice the cost), cp.async double-buffered
//    shared-memory slabs read with ldmatrix, a pre-pass for the popcounts the AND form needs,
//    and a fused epilogue (scale, bias, sign-and-pack). Default (impl 0-3, or 101).
//  * warpgroup (impl=102, experimental): the same kernel tiled for one wgmma.m64n64k256 AND-popc
//    per k-step of the block's warpgroup on sm_90a; mma.sync with that tiling elsewhere.
#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <utility>

#include "conv_geometry.h"
#include "cuda/kernels.h"
#include "cuda/xnor_plan.h"
#include "cuda/xnor_shape.h"
#include "ffi_common.h"

namespace xnorjax {
namespace cuda {
namespace {

// ---------------------------------------------------------------------------------------------
// Simple path.

template <OutputKind kKind>
__global__ void SimpleKernel(ConvShape s, const uint32_t* __restrict__ x,
                             const uint32_t* __restrict__ w, const float* __restrict__ scale,
                             const float* __restrict__ bias,
                             typename OutputTraits<kKind>::Type* __restrict__ out) {
  const int64_t total = GemmRows(s) * OutputRowLength<kKind>(s);
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += step) {
    out[i] = SimpleOutput<kKind>(s, x, w, scale, bias, i);
  }
}

// ---------------------------------------------------------------------------------------------
// Tensor-core path.

// Per-pixel input popcounts, per-channel weight prefix tables and the K table (xnor_plan.h).
__global__ void PrepassKernel(ConvShape s, const uint32_t* __restrict__ x,
                              const uint32_t* __restrict__ w, int32_t* __restrict__ pixel_popc,
                              int32_t* __restrict__ w_prefix, tc::KChunk* __restrict__ ktable,
                              int chunk_words) {
  const int64_t pixels = s.batch * s.in_h * s.in_w;
  const int64_t k_entries = tc::KTableSize(s, chunk_words);
  const int64_t total = pixels + s.out_channels + k_entries;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += step) {
    if (i < pixels) {
      pixel_popc[i] = PixelPopcount(s, x, i);
    } else if (i < pixels + s.out_channels) {
      const int64_t o = i - pixels;
      WeightPrefixTable(s, w, o, w_prefix + o * PrefixTableSize(s));
    } else {
      const int64_t k = i - pixels - s.out_channels;
      ktable[k] = tc::MakeKChunk(s, chunk_words, k);
    }
  }
}

__device__ __forceinline__ uint32_t SharedAddress(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Copies V words global -> shared asynchronously (or stores zeros when src is null).
template <int V>
__device__ __forceinline__ void CopyChunk(uint32_t* dst, const uint32_t* src) {
  if (src == nullptr) {
    if constexpr (V == 4) {
      *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0);
    } else if constexpr (V == 2) {
      *reinterpret_cast<uint2*>(dst) = make_uint2(0, 0);
    } else {
      *dst = 0;
    }
    return;
  }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.ca.shared.global [%0], [%1], %2;\n" ::"r"(SharedAddress(dst)), "l"(src),
               "n"(4 * V)
               : "memory");
#else
  for (int i = 0; i < V; ++i) dst[i] = src[i];
#endif
}

__device__ __forceinline__ void CpAsyncCommit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

template <int kPending>
__device__ __forceinline__ void CpAsyncWait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  // The memory clobber keeps the compiler from moving shared-memory accesses (MaskSlabTails)
  // above the wait.
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
#endif
}

// The device side of tc::LoadSlab: cp.async from x / w, zero stores for padding; `words` is V
// or 1 (input-major weights), a constant at each inlined call site.
template <int V>
struct DeviceCopy {
  const uint32_t* __restrict__ x;
  const uint32_t* __restrict__ w;
  __device__ __forceinline__ void operator()(uint32_t* dst, int64_t src, int operand,
                                             int words) const {
    const uint32_t* from = src < 0 ? nullptr : (operand == 0 ? x : w) + src;
    if (words == V) {
      CopyChunk<V>(dst, from);
    } else {
      CopyChunk<1>(dst, from);
    }
  }
};

__device__ __forceinline__ void LdmatrixX4(const uint32_t* p, uint32_t (&r)[4]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(SharedAddress(p)));
#else
  r[0] = r[1] = r[2] = r[3] = 0;
  __trap();
#endif
}

// acc += popc(A & B) over 256 bits: the m16n8k256 1-bit tensor-core MMA, AND form.
__device__ __forceinline__ void MmaAndPopc(int32_t (&acc)[4], const uint32_t (&a)[4],
                                           const uint32_t (&b)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+r"(acc[0]), "+r"(acc[1]), "+r"(acc[2]), "+r"(acc[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
  __trap();
#endif
}

// One k-step (256 bits) of the warp's tile with mma.sync (any tiling).
template <tc::Tiling kT>
__device__ __forceinline__ void MmaSyncStep(const uint32_t* a_tile, const uint32_t* b_tile,
                                            int warp, int lane, int32_t (&acc)[tc::kFragments]) {
  constexpr int kMTiles = tc::WarpMTiles<kT>(), kNTiles = tc::WarpNTiles<kT>();
  uint32_t a[kMTiles][4];
  uint32_t b[kNTiles][2];
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
    LdmatrixX4(a_tile + tc::ALdmatrixOffset<kT>(warp, mt, lane), a[mt]);
  }
#pragma unroll
  for (int np = 0; np < kNTiles / 2; ++np) {
    uint32_t r[4];
    LdmatrixX4(b_tile + tc::BLdmatrixOffset<kT>(warp, np, lane), r);
#pragma unroll
    for (int q = 0; q < 4; ++q) b[tc::LdmatrixBTile(np, q)][tc::LdmatrixBReg(q)] = r[q];
  }
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int nt = 0; nt < kNTiles; ++nt) {
      MmaAndPopc(*reinterpret_cast<int32_t(*)[4]>(&acc[tc::FragmentIndex<kT>(mt, nt, 0)]), a[mt],
                 b[nt]);
    }
  }
}

// Whether this compilation has Hopper's warpgroup MMA (sm_90a).
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define XNORJAX_HAS_WGMMA 1
#else
#define XNORJAX_HAS_WGMMA 0
#endif

#if XNORJAX_HAS_WGMMA
// acc += popc(A & B) for the block's 64 x 64 tile over 256 bits: one wgmma.m64n64k256 AND-popc
// of the whole warpgroup, A and B read by the tensor cores from shared memory (descriptors).
__device__ __forceinline__ void WgmmaAndPopc(uint64_t a_desc, uint64_t b_desc,
                                             int32_t (&d)[tc::kFragments]) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k256.s32.b1.b1.and.popc "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
      "%32, %33, p;\n}\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]), "+r"(d[6]),
        "+r"(d[7]), "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]), "+r"(d[12]), "+r"(d[13]),
        "+r"(d[14]), "+r"(d[15]), "+r"(d[16]), "+r"(d[17]), "+r"(d[18]), "+r"(d[19]),
        "+r"(d[20]), "+r"(d[21]), "+r"(d[22]), "+r"(d[23]), "+r"(d[24]), "+r"(d[25]),
        "+r"(d[26]), "+r"(d[27]), "+r"(d[28]), "+r"(d[29]), "+r"(d[30]), "+r"(d[31])
      : "l"(a_desc), "l"(b_desc));
}
#endif

// The k-steps of one shared-memory stage.
template <tc::Tiling kT>
__device__ __forceinline__ void MmaSlab(const tc::Smem& smem, int stage, int steps, int warp,
                                        int lane, int32_t (&acc)[tc::kFragments]) {
  if constexpr (kT == tc::Tiling::kWarpgroup && XNORJAX_HAS_WGMMA) {
#if XNORJAX_HAS_WGMMA
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
    for (int step = 0; step < steps; ++step) {
      WgmmaAndPopc(tc::WgmmaDescriptor(SharedAddress(smem.a[stage][step])),
                   tc::WgmmaDescriptor(SharedAddress(smem.b[stage][step])), acc);
    }
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
#endif
  } else {
    for (int step = 0; step < steps; ++step) {
      MmaSyncStep<kT>(smem.a[stage][step], smem.b[stage][step], warp, lane, acc);
    }
  }
}

// Makes this thread's shared-memory writes (cp.async and plain stores) visible to the async proxy
// the wgmma tensor-core reads go through; the barrier that follows publishes them to the block.
__device__ __forceinline__ void FenceForTensorCoreReads() {
#if XNORJAX_HAS_WGMMA
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

template <OutputKind kKind, int V, tc::Tiling kT>
__global__ void __launch_bounds__(tc::kThreads, 4)
    MmaKernel(ConvShape s, const uint32_t* __restrict__ x, const uint32_t* __restrict__ w,
              const int32_t* __restrict__ pixel_popc, const int32_t* __restrict__ w_prefix,
              const tc::KChunk* __restrict__ ktable, const float* __restrict__ scale,
              const float* __restrict__ bias, typename OutputTraits<kKind>::Type* __restrict__ out) {
  __shared__ tc::Smem smem;
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * tc::kBlockRows;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * tc::kBlockCols;

  for (int r = threadIdx.x; r < tc::kBlockRows; r += tc::kThreads) {
    smem.rows[r] = tc::MakeRowInfo(s, pixel_popc, m0 + r);
  }
  for (int c = threadIdx.x; c < tc::kBlockCols; c += tc::kThreads) {
    smem.cols[c] = tc::MakeColInfo(s, w_prefix, scale, bias, n0 + c);
  }
  __syncthreads();

  int32_t acc[tc::kFragments] = {};
  const int64_t slabs = tc::Slabs(s);
  const int64_t k_steps = tc::KSteps(s);
  const DeviceCopy<V> copy{x, w};
  tc::LoadSlab<V>(s, ktable, smem, n0, 0, 0, threadIdx.x, copy);
  CpAsyncCommit();
  for (int64_t slab = 0; slab < slabs; ++slab) {
    const int stage = static_cast<int>(slab & 1);
    if (slab + 1 < slabs) {
      tc::LoadSlab<V>(s, ktable, smem, n0, slab + 1, stage ^ 1, threadIdx.x, copy);
      CpAsyncCommit();
      CpAsyncWait<1>();
    } else {
      CpAsyncWait<0>();
    }
    if (s.channels % geometry::kWordBits != 0) {
      tc::MaskSlabTails<V>(s, smem, slab, stage, threadIdx.x);
    }
    if constexpr (kT == tc::Tiling::kWarpgroup) FenceForTensorCoreReads();
    __syncthreads();
    const int64_t steps_left = k_steps - slab * tc::kSlabSteps;
    const int steps = static_cast<int>(steps_left < tc::kSlabSteps ? steps_left : tc::kSlabSteps);
    MmaSlab<kT>(smem, stage, steps, warp, lane, acc);
    __syncthreads();
  }

  // Fused epilogue over the 32 fragments (xnor_plan.h: FragmentRow / FragmentCol / FragmentSlot).
  using Out = typename OutputTraits<kKind>::Type;
  const int64_t rows = GemmRows(s);
  const int64_t prefix_size = PrefixTableSize(s);
  [[maybe_unused]] uint32_t slot_words[4] = {0, 0, 0, 0};
  [[maybe_unused]] const bool paired_stores =
      s.out_channels % 2 == 0 && (reinterpret_cast<uintptr_t>(out) & 7) == 0;
#pragma unroll
  for (int f = 0; f < tc::kFragments; f += 2) {
    // Fragments (f, f + 1) are adjacent columns of one row.
    [[maybe_unused]] Out values[2];
    bool valid[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int row = tc::FragmentRow<kT>(warp, lane, f + i);
      const int col = tc::FragmentCol<kT>(warp, lane, f + i);
      const int64_t o = n0 + col;
      valid[i] = m0 + row < rows && o < s.out_channels;
      int64_t dot = 0;
      if (valid[i]) {
        dot = tc::EpilogueDot(s, smem.rows[row], smem.cols[col], w_prefix + o * prefix_size,
                              acc[f + i]);
      }
      if constexpr (kKind == OutputKind::kInt32) {
        values[i] = static_cast<int32_t>(dot);
      } else if constexpr (kKind == OutputKind::kFloat32) {
        values[i] = ScaleBias(dot, smem.cols[col].scale, smem.cols[col].bias);
      } else {
        const uint32_t bit =
            valid[i] ? SignBit(ScaleBias(dot, smem.cols[col].scale, smem.cols[col].bias)) : 0u;
        slot_words[tc::FragmentSlot<kT>(f + i)] |= bit << (col % geometry::kWordBits);
      }
    }
    if constexpr (kKind != OutputKind::kPacked) {
      // One 8-byte store when O is even (the pair is then aligned, and both or neither are
      // valid; the host emulation checks the latter).
      const int64_t index = (m0 + tc::FragmentRow<kT>(warp, lane, f)) * s.out_channels + n0 +
                            tc::FragmentCol<kT>(warp, lane, f);
      if (paired_stores) {
        if (valid[0]) {
          if constexpr (kKind == OutputKind::kInt32) {
            *reinterpret_cast<int2*>(out + index) = make_int2(values[0], values[1]);
          } else {
            *reinterpret_cast<float2*>(out + index) = make_float2(values[0], values[1]);
          }
        }
      } else {
        if (valid[0]) out[index] = values[0];
        if (valid[1]) out[index + 1] = values[1];
      }
    }
  }
  if constexpr (kKind == OutputKind::kPacked) {
    const int64_t out_words = OutputWords(s);
#pragma unroll
    for (int slot = 0; slot < 4; ++slot) {
      uint32_t word = slot_words[slot];
      word |= __shfl_xor_sync(0xffffffffu, word, 1);
      word |= __shfl_xor_sync(0xffffffffu, word, 2);
      const int64_t m = m0 + tc::SlotRow<kT>(warp, lane, slot);
      const int64_t word_col = tc::SlotWordCol<kT>(n0, warp, slot);
      if (tc::StoresSlot(lane, slot) && m < rows && word_col < out_words) {
        out[m * out_words + word_col] = word;
      }
    }
  }
}

// 1 when the device runs this file's sm_90a code (wgmma), 0 when another build of it.
__global__ void ProbeWgmmaKernel(int* flag) { *flag = XNORJAX_HAS_WGMMA; }

// ---------------------------------------------------------------------------------------------
// Launch.

ffi::Error LastCudaError(const char* what) {
  const cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess) {
    return ffi::Error(ffi::ErrorCode::kInternal,
                      std::string(what) + ": " + cudaGetErrorString(status));
  }
  return ffi::Error::Success();
}

ffi::Error DeviceMajor(int* major) {
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) {
    return LastCudaError("xnorjax: querying the CUDA device");
  }
  return ffi::Error::Success();
}

template <OutputKind kKind>
ffi::Error LaunchSimple(cudaStream_t stream, const ConvShape& s, const uint32_t* x,
                        const uint32_t* w, const float* scale, const float* bias,
                        typename OutputTraits<kKind>::Type* out) {
  const int64_t total = GemmRows(s) * OutputRowLength<kKind>(s);
  constexpr int kBlock = 256;
  const int64_t blocks = tc::CeilDiv(total, kBlock);
  SimpleKernel<kKind><<<static_cast<unsigned>(blocks < 65536 ? blocks : 65536), kBlock, 0,
                        stream>>>(s, x, w, scale, bias, out);
  return LastCudaError("xnorjax simple kernel");
}

template <OutputKind kKind, int V, tc::Tiling kT>
void LaunchMmaKernel(cudaStream_t stream, const ConvShape& s, const uint32_t* x, const uint32_t* w,
                     const int32_t* pixel_popc, const int32_t* w_prefix, const tc::KChunk* ktable,
                     const float* scale, const float* bias,
                     typename OutputTraits<kKind>::Type* out) {
  const dim3 grid(static_cast<unsigned>(tc::GridRows(s)), static_cast<unsigned>(tc::GridCols(s)));
  MmaKernel<kKind, V, kT><<<grid, tc::kThreads, 0, stream>>>(s, x, w, pixel_popc, w_prefix, ktable,
                                                         scale, bias, out);
}

template <OutputKind kKind, tc::Tiling kT>
ffi::Error LaunchMma(cudaStream_t stream, const tc::ScratchTables& tables, const ConvShape& s,
                     const uint32_t* x, const uint32_t* w, const float* scale, const float* bias,
                     typename OutputTraits<kKind>::Type* out) {
  if (!tc::MmaPathSupported(s)) return LaunchSimple<kKind>(stream, s, x, w, scale, bias, out);
  const int64_t pixels = s.batch * s.in_h * s.in_w;
  const int chunk_words =
      tc::ChunkWords(s, reinterpret_cast<uintptr_t>(x), reinterpret_cast<uintptr_t>(w));
  const int64_t k_entries = tc::KTableSize(s, chunk_words);
  int32_t* pixel_popc = tables.pixel_popc;
  int32_t* w_prefix = tables.w_prefix;
  tc::KChunk* ktable = tables.ktable;
  {
    constexpr int kBlock = 256;
    const int64_t blocks = tc::CeilDiv(pixels + s.out_channels + k_entries, kBlock);
    PrepassKernel<<<static_cast<unsigned>(blocks < 65536 ? blocks : 65536), kBlock, 0, stream>>>(
        s, x, w, pixel_popc, w_prefix, ktable, chunk_words);
  }
  switch (chunk_words) {
    case 4:
      LaunchMmaKernel<kKind, 4, kT>(stream, s, x, w, pixel_popc, w_prefix, ktable, scale, bias, out);
      break;
    case 2:
      LaunchMmaKernel<kKind, 2, kT>(stream, s, x, w, pixel_popc, w_prefix, ktable, scale, bias, out);
      break;
    default:
      LaunchMmaKernel<kKind, 1, kT>(stream, s, x, w, pixel_popc, w_prefix, ktable, scale, bias, out);
      break;
  }
  return LastCudaError("xnorjax tensor-core kernel");
}

template <OutputKind kKind>
ffi::Error Run(cudaStream_t stream, ffi::ResultBuffer<ffi::U8>& scratch_buffer,
               const ConvShape& s, int64_t impl, const uint32_t* x, const uint32_t* w,
               const float* scale, const float* bias,
               typename OutputTraits<kKind>::Type* out) {
  if (GemmRows(s) == 0 || s.out_channels == 0) return ffi::Error::Success();
  const tc::ScratchLayout layout = tc::MakeScratchLayout(s);
  if (static_cast<int64_t>(scratch_buffer->size_bytes()) < layout.bytes) {
    return InvalidArgument("the scratch result has " +
                           std::to_string(scratch_buffer->size_bytes()) +
                           " bytes; this call needs " + std::to_string(layout.bytes) +
                           " (xnorjax._ffi_cuda.scratch_bytes)");
  }
  const tc::ScratchTables tables = tc::CarveScratch(layout, scratch_buffer->typed_data());
  int major = 0;
  if (ffi::Error error = DeviceMajor(&major); error.failure()) return error;
  Path path;
  if (std::string message = ChoosePath(impl, major, &path); !message.empty()) {
    return InvalidArgument(message);
  }
  switch (path) {
    case Path::kSimple:
      return LaunchSimple<kKind>(stream, s, x, w, scale, bias, out);
    case Path::kWarpgroup:
      return LaunchMma<kKind, tc::Tiling::kWarpgroup>(stream, tables, s, x, w, scale, bias, out);
    default:
      return LaunchMma<kKind, tc::Tiling::kSync>(stream, tables, s, x, w, scale, bias, out);
  }
}

Dims DimsOf(ffi::Span<const int64_t> d) { return Dims{d.begin(), d.size()}; }

ConvAttrs MakeConvAttrs(int64_t channels, int64_t stride_h, int64_t stride_w, int64_t pad_top,
                        int64_t pad_bottom, int64_t pad_left, int64_t pad_right, int64_t pad_value,
                        int64_t impl) {
  return ConvAttrs{channels, stride_h, stride_w, pad_top, pad_bottom, pad_left, pad_right,
                   pad_value, impl};
}

// ---------------------------------------------------------------------------------------------
// FFI handlers.

template <bool kInputMajor>
ffi::Error ConvI32Impl(cudaStream_t stream, ffi::Buffer<ffi::U32> x, ffi::Buffer<ffi::U32> w,
                       ffi::ResultBuffer<ffi::S32> out, ffi::ResultBuffer<ffi::U8> scratch,
                       int64_t channels, int64_t stride_h, int64_t stride_w, int64_t pad_top,
                       int64_t pad_bottom, int64_t pad_left, int64_t pad_right, int64_t pad_value,
                       int64_t impl) {
  const ConvAttrs attrs = MakeConvAttrs(channels, stride_h, stride_w, pad_top, pad_bottom,
                                        pad_left, pad_right, pad_value, impl);
  ConvShape s;
  const std::string error =
      ValidateConv(DimsOf(x.dimensions()), DimsOf(w.dimensions()), nullptr, nullptr,
                   DimsOf(out->dimensions()), OutputKind::kInt32, attrs, &s, kInputMajor);
  if (!error.empty()) return InvalidArgument(error);
  return Run<OutputKind::kInt32>(stream, scratch, s, impl, x.typed_data(), w.typed_data(), nullptr,
                                 nullptr, out->typed_data());
}

template <OutputKind kKind, ffi::DataType kOut, bool kInputMajor>
ffi::Error ConvEpilogueImpl(cudaStream_t stream, ffi::Buffer<ffi::U32> x, ffi::Buffer<ffi::U32> w,
                            ffi::Buffer<ffi::F32> scale, ffi::Buffer<ffi::F32> bias,
                            ffi::ResultBuffer<kOut> out, ffi::ResultBuffer<ffi::U8> scratch,
                            int64_t channels, int64_t stride_h, int64_t stride_w, int64_t pad_top,
                            int64_t pad_bottom, int64_t pad_left, int64_t pad_right,
                            int64_t pad_value, int64_t impl) {
  const ConvAttrs attrs = MakeConvAttrs(channels, stride_h, stride_w, pad_top, pad_bottom,
                                        pad_left, pad_right, pad_value, impl);
  const Dims scale_dims = DimsOf(scale.dimensions()), bias_dims = DimsOf(bias.dimensions());
  ConvShape s;
  const std::string error =
      ValidateConv(DimsOf(x.dimensions()), DimsOf(w.dimensions()), &scale_dims, &bias_dims,
                   DimsOf(out->dimensions()), kKind, attrs, &s, kInputMajor);
  if (!error.empty()) return InvalidArgument(error);
  return Run<kKind>(stream, scratch, s, impl, x.typed_data(), w.typed_data(), scale.typed_data(),
                    bias.typed_data(), out->typed_data());
}

template <bool kInputMajor>
ffi::Error DenseI32Impl(cudaStream_t stream, ffi::Buffer<ffi::U32> x, ffi::Buffer<ffi::U32> w,
                        ffi::ResultBuffer<ffi::S32> out, ffi::ResultBuffer<ffi::U8> scratch,
                        int64_t features, int64_t impl) {
  ConvShape s;
  const std::string error =
      ValidateDense(DimsOf(x.dimensions()), DimsOf(w.dimensions()), nullptr, nullptr,
                    DimsOf(out->dimensions()), OutputKind::kInt32, features, impl, &s,
                    kInputMajor);
  if (!error.empty()) return InvalidArgument(error);
  return Run<OutputKind::kInt32>(stream, scratch, s, impl, x.typed_data(), w.typed_data(), nullptr,
                                 nullptr, out->typed_data());
}

template <OutputKind kKind, ffi::DataType kOut, bool kInputMajor>
ffi::Error DenseEpilogueImpl(cudaStream_t stream, ffi::Buffer<ffi::U32> x, ffi::Buffer<ffi::U32> w,
                             ffi::Buffer<ffi::F32> scale, ffi::Buffer<ffi::F32> bias,
                             ffi::ResultBuffer<kOut> out, ffi::ResultBuffer<ffi::U8> scratch,
                             int64_t features, int64_t impl) {
  const Dims scale_dims = DimsOf(scale.dimensions()), bias_dims = DimsOf(bias.dimensions());
  ConvShape s;
  const std::string error =
      ValidateDense(DimsOf(x.dimensions()), DimsOf(w.dimensions()), &scale_dims, &bias_dims,
                    DimsOf(out->dimensions()), kKind, features, impl, &s, kInputMajor);
  if (!error.empty()) return InvalidArgument(error);
  return Run<kKind>(stream, scratch, s, impl, x.typed_data(), w.typed_data(), scale.typed_data(),
                    bias.typed_data(), out->typed_data());
}

// The operands every target takes, packed input and packed weights; the epilogue targets add
// the per-channel scale and bias (as in ffi/cpu/xnor_ffi.cc, with the CUDA contexts). The results
// are the output, then the scratch buffer u8[>= tc::MakeScratchLayout(s).bytes] (WithScratch).
auto BindInputs() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::PlatformStream<cudaStream_t>>()
      .Arg<ffi::Buffer<ffi::U32>>()
      .Arg<ffi::Buffer<ffi::U32>>();
}
auto BindInputsScaleBias() {
  return BindInputs().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>();
}
template <ffi::DataType kOut, typename Binding>
auto WithScratch(Binding binding) {
  return std::move(binding).template Ret<ffi::Buffer<kOut>>().template Ret<ffi::Buffer<ffi::U8>>();
}

}  // namespace

int WgmmaCompiledForDevice() {
  int* flag = nullptr;
  int result = -1;
  if (cudaMalloc(&flag, sizeof(int)) != cudaSuccess) return -1;
  ProbeWgmmaKernel<<<1, 1>>>(flag);
  if (cudaMemcpy(&result, flag, sizeof(int), cudaMemcpyDeviceToHost) != cudaSuccess) result = -1;
  cudaFree(flag);
  cudaGetLastError();
  return result;
}

}  // namespace cuda

// The contract's targets (weights output-major) and the "_hwio" / "_kn" targets (weights in the
// public packed layout), which differ only in how the weights are read.
#define XNORJAX_CONV_HANDLERS(SUFFIX, INPUT_MAJOR)                                                 \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(XnorConvI32Cuda##SUFFIX, cuda::ConvI32Impl<INPUT_MAJOR>,           \
                                ConvAttrsOf(cuda::WithScratch<ffi::S32>(cuda::BindInputs())));     \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(                                                                   \
      XnorConvF32Cuda##SUFFIX,                                                                     \
      (cuda::ConvEpilogueImpl<cuda::OutputKind::kFloat32, ffi::F32, INPUT_MAJOR>),                 \
      ConvAttrsOf(cuda::WithScratch<ffi::F32>(cuda::BindInputsScaleBias())));                      \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(                                                                   \
      XnorConvPackedCuda##SUFFIX,                                                                  \
      (cuda::ConvEpilogueImpl<cuda::OutputKind::kPacked, ffi::U32, INPUT_MAJOR>),                  \
      ConvAttrsOf(cuda::WithScratch<ffi::U32>(cuda::BindInputsScaleBias())));                      \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(XnorDenseI32Cuda##SUFFIX, cuda::DenseI32Impl<INPUT_MAJOR>,         \
                                DenseAttrsOf(cuda::WithScratch<ffi::S32>(cuda::BindInputs())));    \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(                                                                   \
      XnorDenseF32Cuda##SUFFIX,                                                                    \
      (cuda::DenseEpilogueImpl<cuda::OutputKind::kFloat32, ffi::F32, INPUT_MAJOR>),                \
      DenseAttrsOf(cuda::WithScratch<ffi::F32>(cuda::BindInputsScaleBias())));                     \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(                                                                   \
      XnorDensePackedCuda##SUFFIX,                                                                 \
      (cuda::DenseEpilogueImpl<cuda::OutputKind::kPacked, ffi::U32, INPUT_MAJOR>),                 \
      DenseAttrsOf(cuda::WithScratch<ffi::U32>(cuda::BindInputsScaleBias())));

XNORJAX_CONV_HANDLERS(, false)
XNORJAX_CONV_HANDLERS(InputMajor, true)
#undef XNORJAX_CONV_HANDLERS

}  // namespace xnorjax
