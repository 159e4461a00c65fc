// Winograd F(4x4, 3x3) conv and its kernel gradient (see winograd.h), AVX-512F.
#include "cpu/winograd.h"

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#define XNORJAX_TARGET_AVX512F __attribute__((target("avx512f,fma")))

namespace xnorjax {
namespace {

constexpr int64_t kA = 6;  // input tile size (alpha = 4 + 3 - 1)
constexpr int64_t kM = 4;  // output tile size
// The transformed tiles of a group (V and M, or V and dM) take about this many bytes:
constexpr int64_t kSharedGroupBytes = 12 << 20;  // a group all threads work on: in the L3 cache
constexpr int64_t kThreadGroupBytes = 512 << 10;  // a group of one thread: in its L2 cache
// The conv gives each thread its own groups when the transformed kernel U (which every group reads
// whole) is at most this large, and works on shared groups otherwise (batch 128, ms, per-thread vs
// shared: 64->64 at 32x32 11.9 vs 17.4, 256->256 at 8x8 6.9 vs 11.0, 512->512 at 4x4 22 vs 9.4).
constexpr int64_t kThreadGroupKernelBytes = 10 << 20;
// The kernel gradient takes all tiles as one group when they fit this (each group reads and
// writes all of dU; 512->512 at 4x4: 12 ms as one group, 16 as two).
constexpr int64_t kWholeKernelGradBytes = 24 << 20;
constexpr int64_t kTilesPerTask = 16;      // transforms: tiles per parallel task
constexpr int64_t kRowBlocksPerTask = 16;  // products: 12-tile panels per parallel task
constexpr int64_t kChunk = 128;            // kernel gradient: tiles per pass over a thread's blocks

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The calling thread's scratch buffers of the transformed tiles, 64-byte aligned (rows are whole
// cache lines for channel counts that are multiples of 16), kept between calls (allocating and
// faulting in megabytes afresh on every call costs milliseconds: a 37 MiB buffer took 13 ms to
// fill on fresh 4 KiB pages here).
class Scratch {
 public:
  float* In() { return Aligned(in_); }
  float* Out() { return Aligned(out_); }
  void Reserve(int64_t in_floats, int64_t out_floats) {
    if (static_cast<int64_t>(in_.size()) < in_floats + 16) in_.resize(in_floats + 16);
    if (static_cast<int64_t>(out_.size()) < out_floats + 16) out_.resize(out_floats + 16);
  }

 private:
  static float* Aligned(std::vector<float>& v) {
    const uintptr_t address = reinterpret_cast<uintptr_t>(v.data());
    return v.data() + ((64 - address % 64) % 64) / sizeof(float);
  }
  std::vector<float> in_, out_;
};
Scratch& ThreadScratch(int64_t in_floats, int64_t out_floats) {
  thread_local Scratch scratch;
  scratch.Reserve(in_floats, out_floats);
  return scratch;
}

inline __mmask16 TailMask(int64_t left) {
  return left >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << left) - 1);
}

// B^T d for one column of six values: the 1-D input transform (points 0, +-1, +-2, infinity).
XNORJAX_TARGET_AVX512F inline void InputTransform(const __m512 d[kA], __m512 out[kA]) {
  const __m512 two = _mm512_set1_ps(2.0f), four = _mm512_set1_ps(4.0f),
               five = _mm512_set1_ps(5.0f);
  out[0] = _mm512_fmadd_ps(four, d[0], _mm512_fnmadd_ps(five, d[2], d[4]));
  out[1] = _mm512_fnmadd_ps(four, _mm512_add_ps(d[1], d[2]), _mm512_add_ps(d[3], d[4]));
  out[2] = _mm512_fmadd_ps(four, _mm512_sub_ps(d[1], d[2]), _mm512_sub_ps(d[4], d[3]));
  out[3] = _mm512_fmadd_ps(two, _mm512_sub_ps(d[3], d[1]), _mm512_sub_ps(d[4], d[2]));
  out[4] = _mm512_fmadd_ps(two, _mm512_sub_ps(d[1], d[3]), _mm512_sub_ps(d[4], d[2]));
  out[5] = _mm512_fmadd_ps(four, d[1], _mm512_fnmadd_ps(five, d[3], d[5]));
}

// A^T m for six values: the 1-D output transform.
XNORJAX_TARGET_AVX512F inline void OutputTransform(const __m512 m[kA], __m512 out[kM]) {
  const __m512 two = _mm512_set1_ps(2.0f), four = _mm512_set1_ps(4.0f),
               eight = _mm512_set1_ps(8.0f);
  const __m512 s12 = _mm512_add_ps(m[1], m[2]), d12 = _mm512_sub_ps(m[1], m[2]);
  const __m512 s34 = _mm512_add_ps(m[3], m[4]), d34 = _mm512_sub_ps(m[3], m[4]);
  out[0] = _mm512_add_ps(_mm512_add_ps(m[0], s12), s34);
  out[1] = _mm512_fmadd_ps(two, d34, d12);
  out[2] = _mm512_fmadd_ps(four, s34, s12);
  out[3] = _mm512_add_ps(_mm512_fmadd_ps(eight, d34, d12), m[5]);
}

// A g for four values: the transpose of the output transform (output gradient to dM).
XNORJAX_TARGET_AVX512F inline void OutputGradTransform(const __m512 g[kM], __m512 out[kA]) {
  const __m512 two = _mm512_set1_ps(2.0f), four = _mm512_set1_ps(4.0f),
               eight = _mm512_set1_ps(8.0f);
  const __m512 even = _mm512_add_ps(g[0], g[2]), odd = _mm512_add_ps(g[1], g[3]);
  const __m512 even4 = _mm512_fmadd_ps(four, g[2], g[0]);
  const __m512 odd4 = _mm512_fmadd_ps(eight, g[3], _mm512_mul_ps(two, g[1]));
  out[0] = g[0];
  out[1] = _mm512_add_ps(even, odd);
  out[2] = _mm512_sub_ps(even, odd);
  out[3] = _mm512_add_ps(even4, odd4);
  out[4] = _mm512_sub_ps(even4, odd4);
  out[5] = g[3];
}

// out[a][b] = (T X T^T)[a, b] for the 1-D transform T (`transform`, kIn -> kOut values) of the
// kIn x kIn tile X given by columns: in[j][i] = X[i, j]. The input transform is T = B^T, the
// output transform A^T, the output gradient's A.
template <int kIn, int kOut, typename Transform>
XNORJAX_TARGET_AVX512F inline void Transform2D(const __m512 in[kIn][kIn], __m512 out[kOut][kOut],
                                               const Transform& transform) {
  __m512 half[kIn][kOut];  // half[j][a] = (T X)[a, j]
  for (int j = 0; j < kIn; ++j) transform(in[j], half[j]);
  for (int a = 0; a < kOut; ++a) {
    __m512 row[kIn];
    for (int j = 0; j < kIn; ++j) row[j] = half[j][a];
    transform(row, out[a]);
  }
}

// Tile t of the problem: image n, output rows [4 ty, 4 ty + 4), columns [4 tx, 4 tx + 4).
struct Tile {
  int64_t n, ty, tx;
};

struct Tiling {
  int64_t rows, cols, count;  // tiles per image vertically, horizontally; in all
  Tile At(int64_t t) const { return {t / (rows * cols), (t / cols) % rows, t % cols}; }
};

Tiling TilingOf(const FloatConvProblem& p) {
  const int64_t rows = CeilDiv(p.out_h, kM), cols = CeilDiv(p.out_w, kM);
  return {rows, cols, p.batch * rows * cols};
}

// Tiles per group: transformed tiles of `bytes_per_tile` filling about `budget` bytes, a whole
// number of 12-row panels, at most `tiles`.
int64_t GroupTiles(int64_t bytes_per_tile, int64_t budget, int64_t tiles) {
  const int64_t fit = std::max<int64_t>(1, budget / bytes_per_tile / kFloatConvBlockPixels);
  return std::min(fit * kFloatConvBlockPixels, std::max<int64_t>(tiles, 1));
}

// Layout of a group's transformed tiles: panels of `size` consecutive tiles, each holding the 36
// points' rows of those tiles (`channels` floats each), point by point. The products read one
// point of one panel as a contiguous matrix, and a tile's 36 rows lie close together. A point's
// rows are followed by one cache line of padding, so that the 36 rows of a tile do not all map to
// the same cache sets (power-of-two strides thrash the L1 cache: 1.5-2x slower transforms).
struct Panels {
  int64_t size, channels;
  int64_t PointFloats() const { return size * channels + 16; }
  int64_t Offset(int64_t point, int64_t slot) const {
    return ((slot / size) * kWinogradPoints + point) * PointFloats() + slot % size * channels;
  }
  int64_t Floats(int64_t tiles) const {
    return CeilDiv(tiles, size) * kWinogradPoints * PointFloats();
  }
};

// v's rows of tile `tile` (in slot `slot` of the group), channels [c, c + 16).
XNORJAX_TARGET_AVX512F void TransformInputTile(const FloatConvProblem& p, const float* x,
                                               const Tile& tile, int64_t c, float* v,
                                               int64_t slot, const Panels& panels) {
  const __mmask16 mask = TailMask(p.channels - c);
  const int64_t top = tile.ty * kM - p.pad_top, left = tile.tx * kM - p.pad_left;
  __m512 d[kA][kA];  // d[j][i]: the input at row i, column j of the tile
  for (int64_t i = 0; i < kA; ++i) {
    for (int64_t j = 0; j < kA; ++j) {
      const int64_t ih = top + i, iw = left + j;
      const bool inside = ih >= 0 && ih < p.height && iw >= 0 && iw < p.width;
      d[j][i] = inside ? _mm512_maskz_loadu_ps(
                             mask, x + ((tile.n * p.height + ih) * p.width + iw) * p.channels + c)
                       : _mm512_setzero_ps();
    }
  }
  // The next tile to the right reads 4 new columns: fetch their 16 channels now (x streams from
  // memory in tile order, which no hardware prefetcher follows: the loads above stalled on it).
  if (tile.tx + 1 < CeilDiv(p.out_w, kM)) {
    for (int64_t i = 0; i < kA; ++i) {
      const int64_t ih = top + i;
      if (ih < 0 || ih >= p.height) continue;
      for (int64_t j = kA; j < kA + kM; ++j) {
        const int64_t iw = left + j;
        if (iw < p.width) {
          _mm_prefetch(reinterpret_cast<const char*>(
                           x + ((tile.n * p.height + ih) * p.width + iw) * p.channels + c),
                       _MM_HINT_T0);
        }
      }
    }
  }
  __m512 v_tile[kA][kA];  // (B^T d B)[a, b]
  Transform2D<kA, kA>(d, v_tile, InputTransform);
  for (int64_t a = 0; a < kA; ++a) {
    for (int64_t b = 0; b < kA; ++b) {
      _mm512_mask_storeu_ps(v + panels.Offset(a * kA + b, slot) + c, mask, v_tile[a][b]);
    }
  }
}

// y for output channels [o, o + 16) of tile `tile` from m's rows of slot `slot`.
XNORJAX_TARGET_AVX512F void TransformOutputTile(const FloatConvProblem& p, const float* m,
                                                int64_t slot, const Panels& panels,
                                                const Tile& tile, int64_t o, float* y) {
  const __mmask16 mask = TailMask(p.out_channels - o);
  __m512 m_tile[kA][kA];  // m_tile[b][a] = M[a, b]
  for (int64_t a = 0; a < kA; ++a) {
    for (int64_t b = 0; b < kA; ++b) {
      m_tile[b][a] = _mm512_maskz_loadu_ps(mask, m + panels.Offset(a * kA + b, slot) + o);
    }
  }
  __m512 y_tile[kM][kM];  // (A^T M A)[r, u]
  Transform2D<kA, kM>(m_tile, y_tile, OutputTransform);
  for (int64_t r = 0; r < kM && tile.ty * kM + r < p.out_h; ++r) {
    const int64_t oh = tile.ty * kM + r;
    for (int64_t u = 0; u < kM && tile.tx * kM + u < p.out_w; ++u) {
      _mm512_mask_storeu_ps(
          y + ((tile.n * p.out_h + oh) * p.out_w + tile.tx * kM + u) * p.out_channels + o, mask,
          y_tile[r][u]);
    }
  }
}

// dm's rows of slot `slot`: (A dY A^T)[a, b] for output channels [o, o + 16) of tile `tile`;
// outputs past the map (the cropped part of the last tiles) count as zero.
XNORJAX_TARGET_AVX512F void TransformOutputGradTile(const FloatConvProblem& p, const float* g,
                                                    const Tile& tile, int64_t o, float* dm,
                                                    int64_t slot, const Panels& panels) {
  const __mmask16 mask = TailMask(p.out_channels - o);
  __m512 g_tile[kM][kM];  // g_tile[u][r] = dY[r, u]
  for (int64_t u = 0; u < kM; ++u) {
    const int64_t ow = tile.tx * kM + u;
    for (int64_t r = 0; r < kM; ++r) {
      const int64_t oh = tile.ty * kM + r;
      const float* from = g + ((tile.n * p.out_h + oh) * p.out_w + ow) * p.out_channels + o;
      g_tile[u][r] = oh < p.out_h && ow < p.out_w ? _mm512_maskz_loadu_ps(mask, from)
                                                  : _mm512_setzero_ps();
    }
  }
  if (tile.tx + 1 < CeilDiv(p.out_w, kM)) {  // the next tile's dY (see TransformInputTile)
    for (int64_t r = 0; r < kM && tile.ty * kM + r < p.out_h; ++r) {
      for (int64_t u = kM; u < 2 * kM && tile.tx * kM + u < p.out_w; ++u) {
        _mm_prefetch(reinterpret_cast<const char*>(
                         g + ((tile.n * p.out_h + tile.ty * kM + r) * p.out_w + tile.tx * kM + u) *
                                 p.out_channels + o),
                     _MM_HINT_T0);
      }
    }
  }
  __m512 dm_tile[kA][kA];  // (A dY A^T)[a, b]
  Transform2D<kM, kA>(g_tile, dm_tile, OutputGradTransform);
  for (int64_t a = 0; a < kA; ++a) {
    for (int64_t b = 0; b < kA; ++b) {
      _mm512_mask_storeu_ps(dm + panels.Offset(a * kA + b, slot) + o, mask, dm_tile[a][b]);
    }
  }
}

// Runs body(i) for i in [0, n): in parallel (Parallel) or on the calling thread (Serial).
struct Parallel {
  const ParallelFor& parallel_for;
  int64_t threads;
  void operator()(int64_t n, const std::function<void(int64_t)>& body) const {
    parallel_for(n, threads, body);
  }
};
struct Serial {
  void operator()(int64_t n, const std::function<void(int64_t)>& body) const {
    for (int64_t i = 0; i < n; ++i) body(i);
  }
};

// Runs transform(tile, channel, slot) for every tile of [first, first + count) and every 16
// channels of `channels`.
template <typename Loop, typename Transform>
void ForEachTile(const Tiling& tiling, int64_t first, int64_t count, int64_t channels,
                 const Loop& loop, const Transform& transform) {
  loop(CeilDiv(count, kTilesPerTask), [&](int64_t task) {
    const int64_t end = std::min(count, (task + 1) * kTilesPerTask);
    for (int64_t slot = task * kTilesPerTask; slot < end; ++slot) {
      const Tile tile = tiling.At(first + slot);
      for (int64_t c = 0; c < channels; c += 16) transform(tile, c, slot);
    }
  });
}

// The conv's output for tiles [first, first + count), through v and m (panels of 12 tiles).
template <typename Loop>
void ConvGroup(const FloatConvProblem& p, const Tiling& tiling, const float* x, const float* u,
               int64_t first, int64_t count, float* v, float* m, const float* zeros, float* y,
               const Loop& loop) {
  const int64_t c_in = p.channels, c_out = p.out_channels;
  const Panels in_panels{kFloatConvBlockPixels, c_in}, out_panels{kFloatConvBlockPixels, c_out};
  ForEachTile(tiling, first, count, c_in, loop, [&](const Tile& tile, int64_t c, int64_t slot) {
    TransformInputTile(p, x, tile, c, v, slot, in_panels);
  });
  // M[ab] = V[ab] U[ab]: per point and panel a (12 x C) x (C x O) product, as a 1x1 conv.
  const int64_t out_blocks = CeilDiv(c_out, kFloatConvBlockChannels);
  const int64_t panel_count = CeilDiv(count, kFloatConvBlockPixels);
  const int64_t panel_tasks = CeilDiv(panel_count, kRowBlocksPerTask);
  loop(kWinogradPoints * out_blocks * panel_tasks, [&](int64_t task) {
    const int64_t point = task / (out_blocks * panel_tasks);
    const int64_t o = (task / panel_tasks) % out_blocks * kFloatConvBlockChannels;
    const int64_t first_panel = task % panel_tasks * kRowBlocksPerTask;
    const int64_t end = std::min(panel_count, first_panel + kRowBlocksPerTask);
    for (int64_t panel = first_panel; panel < end; ++panel) {
      const int64_t slot = panel * kFloatConvBlockPixels;
      const int64_t rows = std::min(kFloatConvBlockPixels, count - slot);
      const FloatConvProblem product{1, 1, rows, c_in, c_out, 1, 1, 0, 0, 0, 0, 1, rows};
      FloatConvBlock(product, v + in_panels.Offset(point, slot), u + point * c_in * c_out, zeros,
                     m + out_panels.Offset(point, slot), 0, o);
    }
  });
  ForEachTile(tiling, first, count, c_out, loop, [&](const Tile& tile, int64_t o, int64_t slot) {
    TransformOutputTile(p, m, slot, out_panels, tile, o, y);
  });
}

// du += the kernel gradient of tiles [first, first + count), through v and dm (panels of kChunk
// tiles), in parallel.
void KernelGradGroup(const FloatConvProblem& p, const Tiling& tiling, const float* x,
                     const float* g, int64_t first, int64_t count, float* v, float* dm, float* du,
                     int64_t threads, const ParallelFor& parallel_for) {
  const Parallel loop{parallel_for, threads};
  const int64_t c_in = p.channels, c_out = p.out_channels;
  const Panels in_panels{kChunk, c_in}, out_panels{kChunk, c_out};
  ForEachTile(tiling, first, count, c_in, loop, [&](const Tile& tile, int64_t c, int64_t slot) {
    TransformInputTile(p, x, tile, c, v, slot, in_panels);
  });
  ForEachTile(tiling, first, count, c_out, loop, [&](const Tile& tile, int64_t o, int64_t slot) {
    TransformOutputGradTile(p, g, tile, o, dm, slot, out_panels);
  });
  // Each item owns a contiguous range of (point, input block, output block) blocks of du and
  // sweeps the group's tiles in order, a chunk at a time: every du element has one summation
  // order, whatever the number of threads.
  const int64_t in_blocks = CeilDiv(c_in, kFloatKernelGradRows);
  const int64_t out_blocks = CeilDiv(c_out, kFloatConvBlockChannels);
  const int64_t per_point = in_blocks * out_blocks, blocks = kWinogradPoints * per_point;
  const int64_t items = std::max<int64_t>(1, std::min(threads, blocks));
  loop(items, [&](int64_t item) {
    const int64_t begin = blocks * item / items, end = blocks * (item + 1) / items;
    const float* rows[kChunk];
    for (int64_t t0 = 0; t0 < count; t0 += kChunk) {
      const int64_t chunk = std::min(kChunk, count - t0);
      int64_t rows_point = -1;
      for (int64_t b = begin; b < end; ++b) {
        const int64_t point = b / per_point;
        const int64_t c0 = (b % per_point) / out_blocks * kFloatKernelGradRows;
        const int64_t o = (b % out_blocks) * kFloatConvBlockChannels;
        if (point != rows_point) {
          for (int64_t t = 0; t < chunk; ++t) rows[t] = v + in_panels.Offset(point, t0) + t * c_in;
          rows_point = point;
        }
        FloatKernelGradRows(rows, dm + out_panels.Offset(point, t0), chunk, c_in, c_out, c0, o,
                            du + point * c_in * c_out);
      }
    }
  });
}

}  // namespace

std::string ValidateWinogradProblem(FloatConvProblem* p) {
  if (std::string error = ValidateFloatConvProblem(p); !error.empty()) return error;
  if (p->kernel_h != 3 || p->kernel_w != 3) {
    return "Winograd F(4x4, 3x3) needs a 3x3 kernel, got " + std::to_string(p->kernel_h) + "x" +
           std::to_string(p->kernel_w);
  }
  if (std::max({p->pad_top, p->pad_bottom, p->pad_left, p->pad_right}) > 2) {
    return "pads must be at most 2 (kernel - 1) per side";
  }
  return "";
}

void RunWinogradConv(const FloatConvProblem& p, const float* x, const float* u, float* y,
                     int64_t threads, const ParallelFor& parallel_for) {
  const Tiling tiling = TilingOf(p);
  if (tiling.count == 0) return;
  const int64_t c_in = p.channels, c_out = p.out_channels;
  const std::vector<float> zeros(c_in, 0.0f);
  const int64_t bytes_per_tile = kWinogradPoints * (c_in + c_out) * 4;
  const bool per_thread = kWinogradPoints * c_in * c_out * 4 <= kThreadGroupKernelBytes;
  const int64_t group = GroupTiles(
      bytes_per_tile, per_thread ? kThreadGroupBytes : kSharedGroupBytes, tiling.count);
  const int64_t in_floats = Panels{kFloatConvBlockPixels, c_in}.Floats(group);
  const int64_t out_floats = Panels{kFloatConvBlockPixels, c_out}.Floats(group);
  if (per_thread) {
    parallel_for(CeilDiv(tiling.count, group), threads, [&](int64_t task) {
      Scratch& scratch = ThreadScratch(in_floats, out_floats);
      const int64_t first = task * group;
      ConvGroup(p, tiling, x, u, first, std::min(group, tiling.count - first), scratch.In(),
                scratch.Out(), zeros.data(), y, Serial{});
    });
    return;
  }
  Scratch& scratch = ThreadScratch(in_floats, out_floats);
  for (int64_t first = 0; first < tiling.count; first += group) {
    ConvGroup(p, tiling, x, u, first, std::min(group, tiling.count - first), scratch.In(),
              scratch.Out(), zeros.data(), y, Parallel{parallel_for, threads});
  }
}

void RunWinogradKernelGrad(const FloatConvProblem& p, const float* x, const float* g, float* du,
                           int64_t threads, const ParallelFor& parallel_for) {
  const int64_t c_in = p.channels, c_out = p.out_channels, size = kWinogradPoints * c_in * c_out;
  std::fill(du, du + size, 0.0f);
  const Tiling tiling = TilingOf(p);
  if (tiling.count == 0) return;
  const int64_t bytes_per_tile = kWinogradPoints * (c_in + c_out) * 4;
  const int64_t group = bytes_per_tile * tiling.count <= kWholeKernelGradBytes
                            ? tiling.count
                            : GroupTiles(bytes_per_tile, kSharedGroupBytes, tiling.count);
  Scratch& scratch = ThreadScratch(Panels{kChunk, c_in}.Floats(group),
                                   Panels{kChunk, c_out}.Floats(group));
  for (int64_t first = 0; first < tiling.count; first += group) {
    KernelGradGroup(p, tiling, x, g, first, std::min(group, tiling.count - first), scratch.In(),
                    scratch.Out(), du, threads, parallel_for);
  }
}

}  // namespace xnorjax
