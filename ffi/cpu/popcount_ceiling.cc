// Microbenchmark of the machine's XNOR-popcount ceiling (experiments/bench/kernels.py): XOR +
// VPOPCNTQ + add on 512-bit registers, from an L1-resident buffer, on every thread at once.
#include "cpu/popcount_ceiling.h"

#include <immintrin.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <thread>
#include <vector>

#include "cpu/xnor_kernels.h"

namespace xnorjax {
namespace {

constexpr int kChains = 12;         // independent accumulators (hide the popcount latency)
constexpr int64_t kBufferWords = 2048;  // 8 KiB: stays in L1

// Runs `rounds` passes over the buffer; returns the number of bit-MACs done (512 per VPOPCNTQ).
__attribute__((target("avx512f,avx512vpopcntdq"))) int64_t Run(const uint32_t* buffer,
                                                               int64_t rounds, uint64_t* sink) {
  __m512i a[kChains], acc[kChains];
  for (int j = 0; j < kChains; ++j) {
    a[j] = _mm512_set1_epi64(0x9E3779B97F4A7C15ull * (j + 1));
    acc[j] = _mm512_setzero_si512();
  }
  for (int64_t r = 0; r < rounds; ++r) {
    for (int64_t k = 0; k < kBufferWords; k += 16) {
      const __m512i b = _mm512_loadu_si512(buffer + k);
      for (int j = 0; j < kChains; ++j) {
        acc[j] = _mm512_add_epi64(acc[j], _mm512_popcnt_epi64(_mm512_xor_si512(a[j], b)));
      }
    }
  }
  __m512i total = acc[0];
  for (int j = 1; j < kChains; ++j) total = _mm512_add_epi64(total, acc[j]);
  *sink += static_cast<uint64_t>(_mm512_reduce_add_epi64(total));
  return rounds * (kBufferWords / 16) * kChains * 512;
}

}  // namespace

double PopcountCeiling(int64_t threads, double seconds) {
  if (!CpuHasAvx512Vpopcntdq() || threads < 1) return 0.0;
  std::vector<uint32_t> buffer(kBufferWords);
  for (int64_t i = 0; i < kBufferWords; ++i) buffer[i] = static_cast<uint32_t>(i * 2654435761u);
  std::atomic<int64_t> total_bits{0};
  std::atomic<uint64_t> sink{0};
  const auto start = std::chrono::steady_clock::now();
  auto work = [&]() {
    uint64_t local_sink = 0;
    int64_t bits = 0;
    const auto deadline = start + std::chrono::duration<double>(seconds);
    while (std::chrono::steady_clock::now() < deadline) bits += Run(buffer.data(), 16, &local_sink);
    total_bits += bits;
    sink += local_sink;
  };
  std::vector<std::thread> pool;
  for (int64_t t = 1; t < threads; ++t) pool.emplace_back(work);
  work();
  for (std::thread& t : pool) t.join();
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return sink.load() == 0xFFFFFFFFFFFFFFFFull ? 0.0 : static_cast<double>(total_bits) / elapsed;
}

}  // namespace xnorjax
