// Packed XNOR-popcount convolution and dense layers on the CPU: the engine behind the FFI
// targets xnorjax_xnor_{conv,dense}_{i32,f32,packed} (see xnor_ffi.cc for the handlers).
//
// A convolution is computed as an implicit binary GEMM: the packed input is copied once per call
// into a padded buffer (padding as a constant +-1 word, tail bits masked), whose receptive fields
// the microkernels read in place (KH runs of KW * Cw contiguous words per output pixel: no
// im2col), against the weights laid out as [K words][O] so that one
// SIMD register holds one 32-bit word of 16 (AVX-512) or 8 (AVX2) output channels: the
// microkernels broadcast an input word, XOR it with the weight words, popcount each 32-bit lane
// and accumulate, with no horizontal reductions. A dense layer is a 1x1 convolution on a 1x1 map.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

namespace xnorjax {

// Implementation choice (the `impl` attribute of the FFI targets).
enum class XnorImpl : int64_t { kAuto = 0, kAvx512 = 1, kAvx2 = 2, kPortable = 3 };

// What the fused epilogue writes.
enum class XnorOutput { kInt32, kFloat32, kPacked };

// Whether this CPU (and OS) runs the AVX-512 VPOPCNTDQ and AVX2 paths.
bool CpuHasAvx512Vpopcntdq();
bool CpuHasAvx2();

// Whether `impl` (a raw attribute value) names a path this CPU can run; kAuto always can.
bool ImplSupported(int64_t impl);

// The path that kAuto picks on this CPU: AVX-512 VPOPCNTDQ, else AVX2, else portable.
XnorImpl ResolveImpl(int64_t impl);

// Geometry of one packed convolution (a dense layer: height = width = kernel = 1, no padding).
struct ConvProblem {
  int64_t batch = 0, height = 0, width = 0, words = 0;  // x u32[batch, height, width, words]
  int64_t channels = 0;                                  // true C; words = ceil(C / 32)
  int64_t out_channels = 0, kernel_h = 0, kernel_w = 0;  // w u32[O, KH, KW, words]
  int64_t stride_h = 1, stride_w = 1;
  int64_t pad_top = 0, pad_bottom = 0, pad_left = 0, pad_right = 0;
  int64_t pad_value = 0;  // -1, 0 or +1: the value a padded input position holds
  int64_t out_h = 0, out_w = 0;  // filled by ValidateConvProblem
};

// Checks every size and attribute against the others and fills out_h / out_w. Returns an empty
// string when the problem is valid, else a message naming what is wrong.
std::string ValidateConvProblem(ConvProblem* problem);

// Memory order of the packed weights.
enum class WeightLayout {
  kOutputMajor,  // u32[O, KH, KW, Cw]: each output channel's bits contiguous (the FFI contract)
  kInputMajor,   // u32[KH, KW, Cw, O]: pack_bits(kernel, axis=-2) of an HWIO kernel, as is
};

// Runs body(i) for every i in [0, n) on up to `threads` threads; returns when all are done.
using ParallelFor =
    std::function<void(int64_t n, int64_t threads, const std::function<void(int64_t)>& body)>;

// Runs a validated problem. `out` holds int32 [N, OH, OW, O], float32 [N, OH, OW, O] or uint32
// [N, OH, OW, ceil(O / 32)] per `output`; `scale` and `bias` (f32[O]) are read for kFloat32 and
// kPacked: y = dot * scale + bias, packed as the bit (y >= 0). Every output element is written.
// `num_threads` is the most threads to use (fewer for small problems).
// Weight tail bits past `channels` may hold anything (they are discounted), like the input's.
void RunXnorConv(const ConvProblem& problem, WeightLayout layout, XnorImpl impl,
                 XnorOutput output, const uint32_t* x, const uint32_t* w, const float* scale,
                 const float* bias, void* out, int64_t num_threads,
                 const ParallelFor& parallel_for);

// The left operand of the microkernels, read in place: row r is the concatenation, over
// s < segments, of the seg_len words at rows[r] + seg_offset[s]. For a convolution, rows[r]
// points at the first tap of output pixel r in the padded input and segment s is kernel row s
// (KW * Cw contiguous words); for a dense layer there is one segment, the whole input row.
struct RowSource {
  const uint32_t* const* rows;
  const int64_t* seg_offset;
  int64_t segments;
  int64_t seg_len;
};

// Microkernels, one per instruction set, all with the same contract (kw = segments * seg_len):
//   out[r * ldo + o] = sum_{k < kw} popcount(A[r][k] ^ bt[k * ldb + o])
// for r < rows and o < cols. They read bt only at o < cols, but may write out[r * ldo + o] up to
// o < RoundUp(cols, 16) (ldo must leave room).
void PopcountGemmAvx512(const RowSource& a, int64_t rows, const uint32_t* bt, int64_t ldb,
                        int64_t cols, int32_t* out, int64_t ldo);
void PopcountGemmAvx2(const RowSource& a, int64_t rows, const uint32_t* bt, int64_t ldb,
                      int64_t cols, int32_t* out, int64_t ldo);
void PopcountGemmPortable(const RowSource& a, int64_t rows, const uint32_t* bt, int64_t ldb,
                          int64_t cols, int32_t* out, int64_t ldo);

// One output row of the fused epilogue, for o < n (pointers already offset to the row's first
// channel): dot = base - 2 * pc[o] (+ 2 * garbage[o] when given: weight tail bits) (+ corr[o]
// when given: zero padding), then int32 dot, float32 y = fma(float(dot), scale[o], bias[o])
// (one rounding, the same on every path), or packed bits (y >= 0), bit b of word j = channel
// 32 j + b, zero past n.
struct EpilogueArgs {
  const int32_t* pc;
  const int32_t* garbage;
  const int32_t* corr;
  int32_t base;
  int64_t n;
  XnorOutput output;
  const float* scale;
  const float* bias;
  void* out;
};

// The row epilogue after a tile of popcounts (the AVX2 and portable paths).
void EpilogueRowAvx2(const EpilogueArgs& e);
void EpilogueRowPortable(const EpilogueArgs& e);

// The AVX-512 microkernel with the epilogue fused in: the popcounts of row r go straight from
// registers through epilogue[r] (whose pc is not read; its n equals cols), with no tile.
void PopcountGemmEpilogueAvx512(const RowSource& a, int64_t rows, const uint32_t* bt, int64_t ldb,
                                int64_t cols, const EpilogueArgs* epilogue);

// acc[o] += sum_{j < nrows} popcount(rows[j * ld + o] & mask_j) for o < n, where mask_j is all
// ones except for the last row, whose mask is `last_mask` (per instruction set, like the
// microkernels): the +1 count of each output channel over one tap's packed words, or its tail bits.
void AddColumnPopcountsAvx512(const uint32_t* rows, int64_t nrows, int64_t ld, int64_t n,
                              uint32_t last_mask, int32_t* acc);
void AddColumnPopcountsAvx2(const uint32_t* rows, int64_t nrows, int64_t ld, int64_t n,
                            uint32_t last_mask, int32_t* acc);
void AddColumnPopcountsPortable(const uint32_t* rows, int64_t nrows, int64_t ld, int64_t n,
                                uint32_t last_mask, int32_t* acc);

}  // namespace xnorjax
