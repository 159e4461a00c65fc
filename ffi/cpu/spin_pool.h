// A process-wide pool of worker threads for the CPU kernels that spin for a short while after
// each parallel loop before they sleep. A network's packed layers run back to back, separated by
// a few small XLA ops; waking a sleeping thread costs tens of microseconds on a VM, as much as a
// whole small layer, while a spinning worker joins the next loop at once (OpenMP runtimes, which
// oneDNN uses, do the same).
#pragma once

#include <cstdint>
#include <functional>

namespace xnorjax {

// How long an idle worker spins before it sleeps.
constexpr int64_t kSpinPoolSpinMicros = 200;

// Runs body(i) for every i in [0, n) on the calling thread and up to `threads - 1` pool workers,
// and returns when all are done. Returns false, having run nothing, when the pool is busy with
// another caller's loop (concurrent calls: the caller then uses another way) or has no workers.
bool SpinPoolParallelFor(int64_t threads, int64_t n, const std::function<void(int64_t)>& body);

// Number of pool workers (the CPUs this process may run on, minus one; started on first use).
int64_t SpinPoolWorkers();

}  // namespace xnorjax
