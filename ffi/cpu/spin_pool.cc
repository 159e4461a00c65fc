#include "cpu/spin_pool.h"

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace xnorjax {
namespace {

// A hint to the core that this thread is spinning (x86 PAUSE; nothing elsewhere).
inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#endif
}

// One parallel loop. Items are claimed from `next`; the caller waits until `done` reaches n. A
// worker that arrives after the loop ended claims nothing and never touches `body`; the state
// outlives it (shared_ptr).
struct Loop {
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  std::atomic<int64_t> helpers{0};  // workers that may still join
  int64_t n = 0;
  const std::function<void(int64_t)>* body = nullptr;
};

void Work(Loop& loop) {
  int64_t finished = 0;
  for (int64_t i = loop.next.fetch_add(1); i < loop.n; i = loop.next.fetch_add(1)) {
    (*loop.body)(i);
    ++finished;
  }
  if (finished > 0) loop.done.fetch_add(finished, std::memory_order_release);
}

class SpinPool {
 public:
  explicit SpinPool(int64_t workers) {
    for (int64_t t = 0; t < workers; ++t) threads_.emplace_back([this]() { WorkerLoop(); });
    for (std::thread& t : threads_) t.detach();  // process-lifetime workers
  }

  int64_t workers() const { return static_cast<int64_t>(threads_.size()); }

  bool ParallelFor(int64_t threads, int64_t n, const std::function<void(int64_t)>& body) {
    if (threads_.empty()) return false;
    std::unique_lock<std::mutex> busy(run_mu_, std::try_to_lock);
    if (!busy.owns_lock()) return false;
    auto loop = std::make_shared<Loop>();
    loop->n = n;
    loop->body = &body;
    loop->helpers = std::min<int64_t>(threads - 1, workers());
    bool wake;
    {
      std::lock_guard<std::mutex> lock(mu_);
      current_ = loop;
      generation_.fetch_add(1, std::memory_order_release);
      wake = sleepers_ > 0;
    }
    if (wake) cv_.notify_all();
    Work(*loop);
    // Items still running on workers finish within one item's time: spin for them, yielding the
    // core after a while in case a worker was preempted (it may need this core to finish).
    for (int spins = 0; loop->done.load(std::memory_order_acquire) != n; ++spins) {
      if (spins < 4096) {
        CpuRelax();
      } else {
        std::this_thread::yield();
      }
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      current_.reset();
    }
    return true;
  }

 private:
  void WorkerLoop() {
    uint64_t seen = generation_.load(std::memory_order_acquire);
    for (;;) {
      const auto start = std::chrono::steady_clock::now();
      int spins = 0;
      while (generation_.load(std::memory_order_acquire) == seen) {
        CpuRelax();
        if (++spins % 256 == 0 && std::chrono::steady_clock::now() - start >
                                      std::chrono::microseconds(kSpinPoolSpinMicros)) {
          std::unique_lock<std::mutex> lock(mu_);
          ++sleepers_;
          cv_.wait(lock, [&]() { return generation_.load() != seen; });
          --sleepers_;
          break;
        }
      }
      std::shared_ptr<Loop> loop;
      {
        std::lock_guard<std::mutex> lock(mu_);
        seen = generation_.load();
        loop = current_;
      }
      if (loop != nullptr && loop->helpers.fetch_sub(1) > 0) Work(*loop);
    }
  }

  std::vector<std::thread> threads_;
  std::mutex run_mu_;  // one loop at a time
  std::mutex mu_;      // guards current_, sleepers_ and the sleeping side of generation_
  std::condition_variable cv_;
  std::atomic<uint64_t> generation_{0};
  std::shared_ptr<Loop> current_;
  int sleepers_ = 0;
};

int64_t AllowedCpus() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return CPU_COUNT(&set);
  return std::max<int64_t>(1, std::thread::hardware_concurrency());
}

std::atomic<SpinPool*> pool{nullptr};
std::once_flag atfork_once;

// A forked child has none of the parent's threads: it starts a pool of its own when needed (the
// parent's is leaked there, never touched).
void ForgetPoolInChild() { pool.store(nullptr); }

SpinPool& Pool() {
  std::call_once(atfork_once, []() { pthread_atfork(nullptr, nullptr, ForgetPoolInChild); });
  SpinPool* p = pool.load(std::memory_order_acquire);
  if (p != nullptr) return *p;
  static std::mutex create_mu;
  std::lock_guard<std::mutex> lock(create_mu);
  p = pool.load();
  if (p == nullptr) {
    p = new SpinPool(AllowedCpus() - 1);  // lives as long as the process
    pool.store(p, std::memory_order_release);
  }
  return *p;
}

}  // namespace

bool SpinPoolParallelFor(int64_t threads, int64_t n, const std::function<void(int64_t)>& body) {
  if (threads <= 1 || n <= 1) return false;
  return Pool().ParallelFor(threads, n, body);
}

int64_t SpinPoolWorkers() { return Pool().workers(); }

}  // namespace xnorjax
