// xnorjax._cuda_host: the CUDA kernels' index arithmetic run on the CPU, built everywhere (no
// CUDA compiler needed) so that CPU tests exercise the code the GPU runs.
//
// `conv` / `dense` execute the tensor-core path block by block, warp by warp and lane by lane with
// the very functions of ffi/cuda/xnor_plan.h that the device code calls (gather sources, shared-
// memory swizzle, slab chunks, ldmatrix addresses, accumulator layout, epilogue), replacing only the
// five device primitives with their PTX ISA semantics: cp.async (a copy), ldmatrix.x4, the
// mma.m16n8k256 .b1 AND-popc, __shfl_xor_sync and the barriers (the emulation is sequential).
// It also checks what a GPU would not report: every global read lies inside x / w, every output
// element is written exactly once, and shared memory is never read before it is written (shared
// memory starts filled with a poison pattern that would corrupt the result).
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "conv_geometry.h"
#include "cuda/xnor_plan.h"
#include "cuda/xnor_shape.h"

namespace nb = nanobind;

namespace xnorjax {
namespace cuda {
namespace {

// ---------------------------------------------------------------------------------------------
// PTX ISA semantics assumed by the emulation, written from the ISA's tables and independent of
// the kernel's address arithmetic (tc:: functions). groupID g = lane / 4, thread-in-group t = lane % 4.
namespace ptx {

// ldmatrix.sync.aligned.m8n8.x4.shared.b16: lane L supplies the address of row L % 8 of matrix
// L / 8 (16 bytes = 4 words); destination register q of lane L receives word L % 4 of row L / 4
// of matrix q.
std::array<std::array<uint32_t, 4>, 32> LdmatrixX4(const uint32_t* tile,
                                                   const std::array<int, 32>& word_offsets) {
  std::array<std::array<uint32_t, 4>, 32> regs{};
  for (int lane = 0; lane < 32; ++lane) {
    for (int q = 0; q < 4; ++q) {
      const int source_lane = q * 8 + lane / 4;
      regs[lane][q] = tile[word_offsets[source_lane] + lane % 4];
    }
  }
  return regs;
}

// mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc, fragments per the ISA:
//   A register i: row g + 8 * (i % 2), K bits 128 * (i / 2) + 32 * t .. + 31
//   B register i: column g,            K bits 128 * i + 32 * t .. + 31
//   C register i: row g + 8 * (i / 2), column 2 * t + i % 2
void MmaAndPopc(const std::array<std::array<uint32_t, 4>, 32>& a,
                const std::array<std::array<uint32_t, 2>, 32>& b, int32_t (*acc)[4]) {
  uint32_t a_mat[16][8] = {};
  uint32_t b_mat[8][8] = {};
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane / 4, t = lane % 4;
    for (int i = 0; i < 4; ++i) a_mat[g + 8 * (i % 2)][4 * (i / 2) + t] = a[lane][i];
    for (int i = 0; i < 2; ++i) b_mat[g][4 * i + t] = b[lane][i];
  }
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane / 4, t = lane % 4;
    for (int i = 0; i < 4; ++i) {
      const int row = g + 8 * (i / 2), col = 2 * t + i % 2;
      int32_t sum = 0;
      for (int k = 0; k < 8; ++k) sum += Popcount(a_mat[row][k] & b_mat[col][k]);
      acc[lane][i] += sum;
    }
  }
}

// wgmma shared-memory operand, K-major, from its matrix descriptor (PTX ISA, "Matrix Descriptor
// Format" and "Shared Memory Matrix Layout"): start address bits 0-13 (>> 4), stride byte offset
// bits 32-45 (>> 4), swizzle mode bits 62-63 (3 = 32-byte). With 32-byte swizzling a K-major atom
// is 8 rows of 32 bytes, atoms `stride` bytes apart; within each 256-byte-aligned pattern, byte
// address bit 4 (the 16-byte chunk) is XOR-ed with bit 7. Returns rows x 8 words (256 bits each).
std::vector<std::array<uint32_t, 8>> WgmmaReadKMajor(const uint8_t* shared_base, uint64_t desc,
                                                     int rows) {
  const uint32_t start = static_cast<uint32_t>(desc & 0x3FFF) << 4;
  const uint32_t stride = static_cast<uint32_t>((desc >> 32) & 0x3FFF) << 4;
  const int mode = static_cast<int>(desc >> 62);
  const int base_offset = static_cast<int>((desc >> 49) & 7);
  if (mode != 3 || base_offset != 0 || start % 256 != 0) {
    throw std::runtime_error("emulated wgmma: only 32-byte swizzle, 256-byte aligned tiles");
  }
  std::vector<std::array<uint32_t, 8>> m(rows);
  for (int r = 0; r < rows; ++r) {
    for (int chunk = 0; chunk < 2; ++chunk) {
      uint32_t address = start + (r / 8) * stride + (r % 8) * 32 + chunk * 16;
      address ^= ((address >> 7) & 1u) << 4;
      std::memcpy(&m[r][4 * chunk], shared_base + address, 16);
    }
  }
  return m;
}

// wgmma.mma_async.sync.aligned.m64n64k256.s32.b1.b1.and.popc with A and B from shared memory:
// D (64 x 64) += popc(A & B); accumulator register j of lane `lane` of warp w: row
// 16 w + g + 8 * ((j >> 1) & 1), column 8 * (j >> 2) + 2 t + (j & 1).
void WgmmaAndPopc(const uint8_t* shared_base, uint64_t a_desc, uint64_t b_desc,
                  int32_t (*acc)[32][32]) {
  const auto a = WgmmaReadKMajor(shared_base, a_desc, 64);
  const auto b = WgmmaReadKMajor(shared_base, b_desc, 64);
  for (int warp = 0; warp < 4; ++warp) {
    for (int lane = 0; lane < 32; ++lane) {
      const int g = lane / 4, t = lane % 4;
      for (int j = 0; j < 32; ++j) {
        const int row = 16 * warp + g + 8 * ((j >> 1) & 1), col = 8 * (j >> 2) + 2 * t + (j & 1);
        int32_t sum = 0;
        for (int k = 0; k < 8; ++k) sum += Popcount(a[row][k] & b[col][k]);
        acc[warp][lane][j] += sum;
      }
    }
  }
}

}  // namespace ptx

constexpr uint32_t kPoison = 0xA5C3A5C3u;

struct Checks {
  int64_t x_words, w_words;
  int force_chunk_words = 0;   // 0: as the launch chooses
  int64_t bank_conflicts = 0;  // extra shared-memory wavefronts of the ldmatrix reads
};

// Bank-conflict count of one ldmatrix.x4: each 8x8 matrix (8 addresses of 16 bytes) is one phase.
int64_t LdmatrixConflicts(const std::array<int, 32>& word_offsets) {
  int64_t extra = 0;
  for (int q = 0; q < 4; ++q) {
    int banks[32] = {};
    for (int i = 0; i < 8; ++i) {
      for (int k = 0; k < 4; ++k) ++banks[(word_offsets[q * 8 + i] + k) % 32];
    }
    int worst = 0;
    for (int bank : banks) worst = bank > worst ? bank : worst;
    extra += worst - 1;
  }
  return extra;
}

template <OutputKind kKind>
using Out = typename OutputTraits<kKind>::Type;

template <OutputKind kKind>
void EmulateSimple(const ConvShape& s, const uint32_t* x, const uint32_t* w, const float* scale,
                   const float* bias, Out<kKind>* out) {
  const int64_t total = GemmRows(s) * OutputRowLength<kKind>(s);
  for (int64_t i = 0; i < total; ++i) out[i] = SimpleOutput<kKind>(s, x, w, scale, bias, i);
}

// The tensor-core kernel with tiling kT; for kWarpgroup, `wgmma` selects the sm_90a code (one
// wgmma per k-step) rather than the mma.sync code other architectures run.
template <OutputKind kKind, tc::Tiling kT>
void EmulateMma(const ConvShape& s, const uint32_t* x, const uint32_t* w, const float* scale,
                const float* bias, Out<kKind>* out, bool wgmma, Checks* checks) {
  using tc::kBlockCols;
  using tc::kBlockRows;
  const int64_t rows = GemmRows(s);
  const int64_t row_length = OutputRowLength<kKind>(s);
  std::vector<int32_t> writes(static_cast<size_t>(rows * row_length), 0);

  if (!tc::MmaPathSupported(s)) throw std::runtime_error("the tensor-core path does not take this shape");
  // As the launch: V from Cw and the operand addresses, or a smaller V forced by the caller.
  int chunk_words = tc::ChunkWords(s, reinterpret_cast<uintptr_t>(x), reinterpret_cast<uintptr_t>(w));
  if (checks->force_chunk_words > 0) {
    if (s.in_words % checks->force_chunk_words != 0) throw std::runtime_error("chunk_words must divide Cw");
    chunk_words = checks->force_chunk_words;
  }

  // Pre-pass kernel, into one scratch buffer laid out as the launch lays out XLA's (poisoned, so
  // that a table read before it is written, or two tables overlapping, corrupts the result).
  const int64_t pixels = s.batch * s.in_h * s.in_w;
  const int64_t k_entries = tc::KTableSize(s, chunk_words);
  const tc::ScratchLayout layout = tc::MakeScratchLayout(s);
  const int64_t prefix_bytes = s.out_channels * PrefixTableSize(s) * 4;
  const int64_t ktable_bytes = k_entries * static_cast<int64_t>(sizeof(tc::KChunk));
  if (layout.w_prefix < pixels * 4 || layout.ktable < layout.w_prefix + prefix_bytes ||
      layout.ktable % 8 != 0 || layout.bytes < layout.ktable + ktable_bytes) {
    throw std::runtime_error("the scratch layout does not hold the tables of this call");
  }
  std::vector<uint8_t> scratch(static_cast<size_t>(layout.bytes), 0xA5);
  const tc::ScratchTables tables = tc::CarveScratch(layout, scratch.data());
  int32_t* const pixel_popc = tables.pixel_popc;
  int32_t* const w_prefix = tables.w_prefix;
  tc::KChunk* const ktable = tables.ktable;
  for (int64_t p = 0; p < pixels; ++p) pixel_popc[p] = PixelPopcount(s, x, p);
  for (int64_t o = 0; o < s.out_channels; ++o) {
    WeightPrefixTable(s, w, o, w_prefix + o * PrefixTableSize(s));
  }
  for (int64_t k = 0; k < k_entries; ++k) ktable[k] = tc::MakeKChunk(s, chunk_words, k);
  // Which thread copied each word of smem->b: a thread may only mask (MaskSlabTails) words it
  // copied itself, the only ones its cp.async.wait_group makes visible to it before the barrier.
  auto smem = std::make_unique<tc::Smem>();
  uint32_t* const b_words = &smem->b[0][0][0];
  std::vector<int> b_owner(sizeof(smem->b) / sizeof(uint32_t), -1);
  int current_thread = -1;
  const auto copy = [&](uint32_t* dst, int64_t src, int operand, int words) {
    if (operand == 1) {
      for (int i = 0; i < words; ++i) b_owner[dst - b_words + i] = current_thread;
    }
    const uint32_t* base = operand == 0 ? x : w;
    const int64_t size = operand == 0 ? checks->x_words : checks->w_words;
    if (words != chunk_words && words != 1) throw std::runtime_error("bad copy width");
    if (operand == 0 && words != chunk_words) throw std::runtime_error("A copied word by word");
    if (src < 0) {
      std::memset(dst, 0, sizeof(uint32_t) * words);
      return;
    }
    if (src + words > size) throw std::runtime_error("gather reads past the end of x or w");
    if (src % words != 0) throw std::runtime_error("misaligned cp.async source");
    std::memcpy(dst, base + src, sizeof(uint32_t) * words);
  };

  for (int64_t bx = 0; bx < tc::GridRows(s); ++bx) {
    for (int64_t by = 0; by < tc::GridCols(s); ++by) {
      const int64_t m0 = bx * kBlockRows, n0 = by * kBlockCols;
      {
        uint32_t* raw = reinterpret_cast<uint32_t*>(smem->a);
        std::fill(raw, raw + sizeof(smem->a) / 4, kPoison);
        raw = reinterpret_cast<uint32_t*>(smem->b);
        std::fill(raw, raw + sizeof(smem->b) / 4, kPoison);
      }
      for (int r = 0; r < kBlockRows; ++r) smem->rows[r] = tc::MakeRowInfo(s, pixel_popc, m0 + r);
      for (int c = 0; c < kBlockCols; ++c) {
        smem->cols[c] = tc::MakeColInfo(s, w_prefix, scale, bias, n0 + c);
      }
      int32_t acc[tc::kWarps][32][tc::kFragments] = {};
      const auto load = [&](int64_t slab, int stage) {
        for (int thread = 0; thread < tc::kThreads; ++thread) {
          current_thread = thread;
          switch (chunk_words) {
            case 4: tc::LoadSlab<4>(s, ktable, *smem, n0, slab, stage, thread, copy); break;
            case 2: tc::LoadSlab<2>(s, ktable, *smem, n0, slab, stage, thread, copy); break;
            default: tc::LoadSlab<1>(s, ktable, *smem, n0, slab, stage, thread, copy); break;
          }
        }
      };
      const auto* shared_base = reinterpret_cast<const uint8_t*>(smem.get());
      const auto shared_address = [&](const uint32_t* p) {
        return static_cast<uint32_t>(reinterpret_cast<const uint8_t*>(p) - shared_base);
      };
      const auto mask_tails = [&](int64_t slab, int stage) {
        if (s.channels % geometry::kWordBits == 0) return;
        uint32_t* const stage_words = &smem->b[stage][0][0];
        const size_t stage_size = sizeof(smem->b[stage]) / sizeof(uint32_t);
        std::vector<uint32_t> before(stage_size);
        for (int thread = 0; thread < tc::kThreads; ++thread) {
          std::copy(stage_words, stage_words + stage_size, before.begin());
          switch (chunk_words) {
            case 4: tc::MaskSlabTails<4>(s, *smem, slab, stage, thread); break;
            case 2: tc::MaskSlabTails<2>(s, *smem, slab, stage, thread); break;
            default: tc::MaskSlabTails<1>(s, *smem, slab, stage, thread); break;
          }
          for (size_t i = 0; i < stage_size; ++i) {
            if (stage_words[i] != before[i] && b_owner[stage_words + i - b_words] != thread) {
              throw std::runtime_error("a thread masked a shared-memory word another thread copied");
            }
          }
        }
      };
      const int64_t slabs = tc::Slabs(s), k_steps = tc::KSteps(s);
      load(0, 0);
      for (int64_t slab = 0; slab < slabs; ++slab) {
        const int stage = static_cast<int>(slab & 1);
        if (slab + 1 < slabs) load(slab + 1, stage ^ 1);
        mask_tails(slab, stage);  // after the wait for this slab's copies, before the barrier
        const int64_t steps_left = k_steps - slab * tc::kSlabSteps;
        const int steps = static_cast<int>(steps_left < tc::kSlabSteps ? steps_left : tc::kSlabSteps);
        for (int step = 0; step < steps; ++step) {
          const uint32_t* a_tile = smem->a[stage][step];
          const uint32_t* b_tile = smem->b[stage][step];
          if (wgmma) {
            ptx::WgmmaAndPopc(shared_base, tc::WgmmaDescriptor(shared_address(a_tile)),
                              tc::WgmmaDescriptor(shared_address(b_tile)), acc);
            continue;
          }
          constexpr int kMTiles = tc::WarpMTiles<kT>(), kNTiles = tc::WarpNTiles<kT>();
          for (int warp = 0; warp < tc::kWarps; ++warp) {
            std::array<std::array<std::array<uint32_t, 4>, 32>, kMTiles> a;
            std::array<std::array<std::array<uint32_t, 2>, 32>, kNTiles> b;
            for (int mt = 0; mt < kMTiles; ++mt) {
              std::array<int, 32> offsets;
              for (int lane = 0; lane < 32; ++lane) offsets[lane] = tc::ALdmatrixOffset<kT>(warp, mt, lane);
              checks->bank_conflicts += LdmatrixConflicts(offsets);
              a[mt] = ptx::LdmatrixX4(a_tile, offsets);
            }
            for (int np = 0; np < kNTiles / 2; ++np) {
              std::array<int, 32> offsets;
              for (int lane = 0; lane < 32; ++lane) offsets[lane] = tc::BLdmatrixOffset<kT>(warp, np, lane);
              checks->bank_conflicts += LdmatrixConflicts(offsets);
              const auto r = ptx::LdmatrixX4(b_tile, offsets);
              for (int lane = 0; lane < 32; ++lane) {
                for (int q = 0; q < 4; ++q) b[tc::LdmatrixBTile(np, q)][lane][tc::LdmatrixBReg(q)] = r[lane][q];
              }
            }
            for (int mt = 0; mt < kMTiles; ++mt) {
              for (int nt = 0; nt < kNTiles; ++nt) {
                int32_t tile_acc[32][4];
                const int f0 = tc::FragmentIndex<kT>(mt, nt, 0);
                for (int lane = 0; lane < 32; ++lane) std::memcpy(tile_acc[lane], &acc[warp][lane][f0], sizeof(tile_acc[lane]));
                ptx::MmaAndPopc(a[mt], b[nt], tile_acc);
                for (int lane = 0; lane < 32; ++lane) std::memcpy(&acc[warp][lane][f0], tile_acc[lane], sizeof(tile_acc[lane]));
              }
            }
          }
        }
      }

      // Epilogue, as the kernel: per lane, then the quad OR of the packed words.
      const int64_t prefix_size = PrefixTableSize(s);
      const auto store = [&](int64_t index, Out<kKind> value) {
        if (index < 0 || index >= rows * row_length) throw std::runtime_error("store out of bounds");
        out[index] = value;
        ++writes[index];
      };
      for (int warp = 0; warp < tc::kWarps; ++warp) {
        uint32_t slot_words[32][4] = {};
        for (int lane = 0; lane < 32; ++lane) {
          for (int f = 0; f < tc::kFragments; ++f) {
            const int row = tc::FragmentRow<kT>(warp, lane, f);
            const int col = tc::FragmentCol<kT>(warp, lane, f);
            const int64_t m = m0 + row, o = n0 + col;
            const bool valid = m < rows && o < s.out_channels;
            if (f & 1) {
              // The kernel handles fragments (f - 1, f) as one pair: adjacent columns of one row,
              // both or neither valid when O is even (then stored with one 8-byte store).
              const int64_t o_first = n0 + tc::FragmentCol<kT>(warp, lane, f - 1);
              const int64_t m_first = m0 + tc::FragmentRow<kT>(warp, lane, f - 1);
              if (o_first + 1 != o || m_first != m ||
                  (s.out_channels % 2 == 0 && (m_first < rows && o_first < s.out_channels) != valid)) {
                throw std::runtime_error("fragment pair is not two adjacent, equally valid outputs");
              }
            }
            int64_t dot = 0;
            if (valid) {
              dot = tc::EpilogueDot(s, smem->rows[row], smem->cols[col],
                                    w_prefix + o * prefix_size, acc[warp][lane][f]);
            }
            if constexpr (kKind == OutputKind::kInt32) {
              if (valid) store(m * s.out_channels + o, static_cast<int32_t>(dot));
            } else if constexpr (kKind == OutputKind::kFloat32) {
              if (valid) store(m * s.out_channels + o, ScaleBias(dot, smem->cols[col].scale, smem->cols[col].bias));
            } else {
              const uint32_t bit =
                  valid ? SignBit(ScaleBias(dot, smem->cols[col].scale, smem->cols[col].bias)) : 0u;
              slot_words[lane][tc::FragmentSlot<kT>(f)] |= bit << (col % geometry::kWordBits);
            }
          }
        }
        if constexpr (kKind == OutputKind::kPacked) {
          const int64_t out_words = OutputWords(s);
          for (int slot = 0; slot < 4; ++slot) {
            for (int lane = 0; lane < 32; ++lane) {
              // word |= shfl_xor(word, 1); word |= shfl_xor(word, 2): the OR over the quad.
              const uint32_t word = slot_words[lane][slot] | slot_words[lane ^ 1][slot] |
                                    slot_words[lane ^ 2][slot] | slot_words[lane ^ 3][slot];
              const int64_t m = m0 + tc::SlotRow<kT>(warp, lane, slot);
              const int64_t word_col = tc::SlotWordCol<kT>(n0, warp, slot);
              if (tc::StoresSlot(lane, slot) && m < rows && word_col < out_words) {
                store(m * out_words + word_col, word);
              }
            }
          }
        }
      }
    }
  }
  for (size_t i = 0; i < writes.size(); ++i) {
    if (writes[i] != 1) {
      throw std::runtime_error("output element " + std::to_string(i) + " written " +
                               std::to_string(writes[i]) + " times");
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Python interface.

using U32Array = nb::ndarray<const uint32_t, nb::c_contig, nb::device::cpu>;
using F32Array = nb::ndarray<const float, nb::c_contig, nb::device::cpu>;

OutputKind ParseKind(const std::string& kind) {
  if (kind == "i32") return OutputKind::kInt32;
  if (kind == "f32") return OutputKind::kFloat32;
  if (kind == "packed") return OutputKind::kPacked;
  throw nb::value_error("kind must be 'i32', 'f32' or 'packed'");
}

template <typename T>
std::vector<int64_t> ShapeOfTyped(const T& a) {
  std::vector<int64_t> shape(a.ndim());
  for (size_t i = 0; i < a.ndim(); ++i) shape[i] = static_cast<int64_t>(a.shape(i));
  return shape;
}

Dims AsDims(const std::vector<int64_t>& v) { return Dims{v.data(), v.size()}; }

template <OutputKind kKind>
nb::object RunEmulation(const ConvShape& s, const std::string& path, const uint32_t* x,
                        int64_t x_words, const uint32_t* w, int64_t w_words, const float* scale,
                        const float* bias, const std::vector<size_t>& out_shape,
                        int chunk_words, int64_t* bank_conflicts) {
  using T = Out<kKind>;
  size_t count = 1;
  for (size_t d : out_shape) count *= d;
  T* data = new T[count == 0 ? 1 : count];
  nb::capsule owner(data, [](void* p) noexcept { delete[] static_cast<T*>(p); });
  Checks checks{x_words, w_words};
  checks.force_chunk_words = chunk_words;
  if (GemmRows(s) > 0 && s.out_channels > 0) {
    if (path == "mma") {
      EmulateMma<kKind, tc::Tiling::kSync>(s, x, w, scale, bias, data, false, &checks);
    } else if (path == "wgmma") {
      EmulateMma<kKind, tc::Tiling::kWarpgroup>(s, x, w, scale, bias, data, true, &checks);
    } else if (path == "warpgroup_mma_sync") {
      EmulateMma<kKind, tc::Tiling::kWarpgroup>(s, x, w, scale, bias, data, false, &checks);
    } else if (path == "simple") {
      EmulateSimple<kKind>(s, x, w, scale, bias, data);
    } else {
      throw nb::value_error("path must be 'simple', 'mma', 'wgmma' or 'warpgroup_mma_sync'");
    }
  }
  *bank_conflicts = checks.bank_conflicts;
  return nb::cast(nb::ndarray<nb::numpy, T>(data, out_shape.size(), out_shape.data(), owner));
}

nb::object Run(const ConvShape& s, OutputKind kind, const std::string& path, const U32Array& x,
               const U32Array& w, const float* scale, const float* bias,
               const std::vector<int64_t>& out_dims, int chunk_words) {
  std::vector<size_t> out_shape(out_dims.begin(), out_dims.end());
  int64_t conflicts = 0;
  nb::object result;
  const int64_t x_words = static_cast<int64_t>(x.size()), w_words = static_cast<int64_t>(w.size());
  switch (kind) {
    case OutputKind::kInt32:
      result = RunEmulation<OutputKind::kInt32>(s, path, x.data(), x_words, w.data(), w_words,
                                                scale, bias, out_shape, chunk_words, &conflicts);
      break;
    case OutputKind::kFloat32:
      result = RunEmulation<OutputKind::kFloat32>(s, path, x.data(), x_words, w.data(), w_words,
                                                  scale, bias, out_shape, chunk_words, &conflicts);
      break;
    case OutputKind::kPacked:
      result = RunEmulation<OutputKind::kPacked>(s, path, x.data(), x_words, w.data(), w_words,
                                                 scale, bias, out_shape, chunk_words, &conflicts);
      break;
  }
  return nb::make_tuple(result, conflicts);
}

nb::object EmulateConv(const U32Array& x, const U32Array& w, std::optional<F32Array> scale,
                       std::optional<F32Array> bias, int64_t channels, int64_t stride_h,
                       int64_t stride_w, int64_t pad_top, int64_t pad_bottom, int64_t pad_left,
                       int64_t pad_right, int64_t pad_value, int64_t impl, const std::string& kind,
                       const std::string& path, int chunk_words, bool weights_input_major) {
  const OutputKind k = ParseKind(kind);
  const std::vector<int64_t> x_dims = ShapeOfTyped(x), w_dims = ShapeOfTyped(w);
  std::vector<int64_t> scale_dims, bias_dims;
  if (scale) scale_dims = ShapeOfTyped(*scale);
  if (bias) bias_dims = ShapeOfTyped(*bias);
  const Dims sd = AsDims(scale_dims), bd = AsDims(bias_dims);
  const ConvAttrs attrs{channels, stride_h, stride_w, pad_top,  pad_bottom,
                        pad_left, pad_right, pad_value, impl};
  // The result dims the FFI wrapper would declare.
  ConvShape s;
  std::vector<int64_t> out_dims;
  if (x_dims.size() == 4 && w_dims.size() == 4) {
    const int64_t o = weights_input_major ? w_dims[3] : w_dims[0];
    const int64_t kh = weights_input_major ? w_dims[0] : w_dims[1];
    const int64_t kw = weights_input_major ? w_dims[1] : w_dims[2];
    const int64_t oh = geometry::ConvOutputSize(x_dims[1], kh, stride_h, pad_top, pad_bottom);
    const int64_t ow = geometry::ConvOutputSize(x_dims[2], kw, stride_w, pad_left, pad_right);
    out_dims = {x_dims[0], oh, ow, k == OutputKind::kPacked ? geometry::PackedWords(o) : o};
  }
  const std::string error =
      ValidateConv(AsDims(x_dims), AsDims(w_dims), scale ? &sd : nullptr, bias ? &bd : nullptr,
                   AsDims(out_dims), k, attrs, &s, weights_input_major);
  if (!error.empty()) throw nb::value_error(error.c_str());
  return Run(s, k, path, x, w, scale ? scale->data() : nullptr, bias ? bias->data() : nullptr,
             out_dims, chunk_words);
}

nb::object EmulateDense(const U32Array& x, const U32Array& w, std::optional<F32Array> scale,
                        std::optional<F32Array> bias, int64_t features, int64_t impl,
                        const std::string& kind, const std::string& path, int chunk_words,
                        bool weights_input_major) {
  const OutputKind k = ParseKind(kind);
  const std::vector<int64_t> x_dims = ShapeOfTyped(x), w_dims = ShapeOfTyped(w);
  std::vector<int64_t> scale_dims, bias_dims;
  if (scale) scale_dims = ShapeOfTyped(*scale);
  if (bias) bias_dims = ShapeOfTyped(*bias);
  const Dims sd = AsDims(scale_dims), bd = AsDims(bias_dims);
  std::vector<int64_t> out_dims;
  if (x_dims.size() == 2 && w_dims.size() == 2) {
    const int64_t n = weights_input_major ? w_dims[1] : w_dims[0];
    out_dims = {x_dims[0], k == OutputKind::kPacked ? geometry::PackedWords(n) : n};
  }
  ConvShape s;
  const std::string error =
      ValidateDense(AsDims(x_dims), AsDims(w_dims), scale ? &sd : nullptr, bias ? &bd : nullptr,
                    AsDims(out_dims), k, features, impl, &s, weights_input_major);
  if (!error.empty()) throw nb::value_error(error.c_str());
  return Run(s, k, path, x, w, scale ? scale->data() : nullptr, bias ? bias->data() : nullptr,
             out_dims, chunk_words);
}

// The FFI handlers' validation on explicit dims (as the handlers see them): "" when valid.
std::string ValidateConvDims(std::vector<int64_t> x, std::vector<int64_t> w,
                             std::optional<std::vector<int64_t>> scale,
                             std::optional<std::vector<int64_t>> bias, std::vector<int64_t> out,
                             const std::string& kind, int64_t channels, int64_t stride_h,
                             int64_t stride_w, int64_t pad_top, int64_t pad_bottom,
                             int64_t pad_left, int64_t pad_right, int64_t pad_value,
                             int64_t impl, bool weights_input_major) {
  const ConvAttrs attrs{channels, stride_h, stride_w, pad_top,  pad_bottom,
                        pad_left, pad_right, pad_value, impl};
  Dims sd{}, bd{};
  if (scale) sd = AsDims(*scale);
  if (bias) bd = AsDims(*bias);
  ConvShape s;
  return ValidateConv(AsDims(x), AsDims(w), scale ? &sd : nullptr, bias ? &bd : nullptr,
                      AsDims(out), ParseKind(kind), attrs, &s, weights_input_major);
}

std::string ValidateDenseDims(std::vector<int64_t> x, std::vector<int64_t> w,
                              std::optional<std::vector<int64_t>> scale,
                              std::optional<std::vector<int64_t>> bias, std::vector<int64_t> out,
                              const std::string& kind, int64_t features, int64_t impl,
                              bool weights_input_major) {
  Dims sd{}, bd{};
  if (scale) sd = AsDims(*scale);
  if (bias) bd = AsDims(*bias);
  ConvShape s;
  return ValidateDense(AsDims(x), AsDims(w), scale ? &sd : nullptr, bias ? &bd : nullptr,
                       AsDims(out), ParseKind(kind), features, impl, &s, weights_input_major);
}

}  // namespace
}  // namespace cuda
}  // namespace xnorjax

NB_MODULE(_cuda_host, m) {
  using namespace xnorjax::cuda;  // NOLINT
  m.doc() = "The CUDA kernels' index arithmetic (ffi/cuda/xnor_plan.h) emulated on the CPU";
  m.def("conv", &EmulateConv, nb::arg("x"), nb::arg("w"), nb::arg("scale").none(),
        nb::arg("bias").none(), nb::kw_only(), nb::arg("channels"), nb::arg("stride_h"),
        nb::arg("stride_w"), nb::arg("pad_top"), nb::arg("pad_bottom"), nb::arg("pad_left"),
        nb::arg("pad_right"), nb::arg("pad_value"), nb::arg("impl") = 0, nb::arg("kind"),
        nb::arg("path"), nb::arg("chunk_words") = 0, nb::arg("weights_input_major") = false,
        "Runs a CUDA conv path on the CPU; returns (result, ldmatrix bank conflicts).\n"
        "chunk_words (tensor-core paths): force the gather width V (0: as the launch chooses).\n"
        "weights_input_major: w is u32[KH, KW, Cw, O] (the '_hwio' targets), not [O, KH, KW, Cw].");
  m.def("dense", &EmulateDense, nb::arg("x"), nb::arg("w"), nb::arg("scale").none(),
        nb::arg("bias").none(), nb::kw_only(), nb::arg("features"), nb::arg("impl") = 0,
        nb::arg("kind"), nb::arg("path"), nb::arg("chunk_words") = 0,
        nb::arg("weights_input_major") = false,
        "Runs a CUDA dense path on the CPU; returns (result, ldmatrix bank conflicts).");
  m.def("validate_conv", &ValidateConvDims, nb::arg("x"), nb::arg("w"), nb::arg("scale").none(),
        nb::arg("bias").none(), nb::arg("out"), nb::kw_only(), nb::arg("kind"),
        nb::arg("channels"), nb::arg("stride_h"), nb::arg("stride_w"), nb::arg("pad_top"),
        nb::arg("pad_bottom"), nb::arg("pad_left"), nb::arg("pad_right"), nb::arg("pad_value"),
        nb::arg("impl"), nb::arg("weights_input_major") = false);
  m.def("validate_dense", &ValidateDenseDims, nb::arg("x"), nb::arg("w"), nb::arg("scale").none(),
        nb::arg("bias").none(), nb::arg("out"), nb::kw_only(), nb::arg("kind"),
        nb::arg("features"), nb::arg("impl"), nb::arg("weights_input_major") = false);
  m.def("scratch_bytes", &ScratchBytes, nb::arg("batch"), nb::arg("in_h"), nb::arg("in_w"),
        nb::arg("in_words"), nb::arg("kernel_h"), nb::arg("kernel_w"), nb::arg("out_channels"));
  m.def("choose_path", [](int64_t impl, int cc_major) {
    Path path = Path::kSimple;
    const std::string error = ChoosePath(impl, cc_major, &path);
    if (!error.empty()) throw nb::value_error(error.c_str());
    return path == Path::kMma ? "mma" : (path == Path::kWarpgroup ? "warpgroup" : "simple");
  });
  m.def("swizzled_word", &tc::SwizzledWord, nb::arg("row"), nb::arg("word"));
  m.def("wgmma_descriptor", &tc::WgmmaDescriptor, nb::arg("shared_address"));
  m.def("acc_row", &tc::AccRow, nb::arg("lane"), nb::arg("r"));
  m.def("acc_col", &tc::AccCol, nb::arg("lane"), nb::arg("r"));
  m.def("slab_chunk_at", [](int chunk, int rows, int chunk_words) {
    const tc::SlabChunk c = tc::SlabChunkAt(chunk, rows, chunk_words);
    return nb::make_tuple(c.step, c.row, c.word);
  });
  m.def("slab_chunks", &tc::SlabChunks, nb::arg("rows"), nb::arg("chunk_words"));
  m.attr("IMPL_SIMPLE") = kImplSimple;
  m.attr("IMPL_MMA") = kImplMma;
  m.attr("IMPL_WGMMA") = kImplWgmma;
  m.attr("BLOCK_ROWS") = tc::kBlockRows;
  m.attr("BLOCK_COLS") = tc::kBlockCols;
  m.attr("SLAB_WORDS") = tc::kSlabWords;
  m.attr("STEP_WORDS") = tc::kStepWords;
  m.attr("THREADS") = tc::kThreads;
}
