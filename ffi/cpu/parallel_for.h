// Parallel loops for the CPU kernels: over XLA's intra-op thread pool (inside a handler), or
// over std::threads (the test-only entry points, which run outside XLA).
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "cpu/spin_pool.h"
#include "xla/ffi/api/ffi.h"

namespace xnorjax {

// Runs body(i) for i in [0, n) on the calling thread and up to `threads - 1` pool tasks. Items
// are claimed from a shared counter, so the loop finishes even if no scheduled task ever runs
// (XLA allows tasks to run late, inline, or on a pool of size 1): the caller waits only for items
// that another thread has already claimed. Tasks that start after the loop ended claim nothing
// and never touch `body`; the shared state outlives them.
inline void ParallelForOnPool(xla::ffi::ThreadPool* pool, int64_t threads, int64_t n,
                              const std::function<void(int64_t)>& body) {
  if (pool == nullptr || threads <= 1 || n <= 1) {
    for (int64_t i = 0; i < n; ++i) body(i);
    return;
  }
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    int64_t n = 0;
    const std::function<void(int64_t)>* body = nullptr;
    std::mutex mu;
    std::condition_variable cv;
  };
  auto state = std::make_shared<State>();
  state->n = n;
  state->body = &body;
  auto work = [](State& s) {
    int64_t finished = 0;
    for (int64_t i = s.next.fetch_add(1); i < s.n; i = s.next.fetch_add(1)) {
      (*s.body)(i);
      ++finished;
    }
    if (finished > 0 && s.done.fetch_add(finished) + finished == s.n) {
      std::lock_guard<std::mutex> lock(s.mu);
      s.cv.notify_all();
    }
  };
  const int64_t tasks = std::min(threads, n) - 1;
  for (int64_t t = 0; t < tasks; ++t) {
    pool->Schedule([state, work]() { work(*state); });
  }
  work(*state);
  std::unique_lock<std::mutex> lock(state->mu);
  state->cv.wait(lock, [&]() { return state->done.load() == state->n; });
}

// The parallel loop of the FFI handlers: the spinning pool (spin_pool.h), or XLA's pool while the
// spinning pool runs another caller's loop. Returns a callable (n, threads, body).
inline auto ParallelForOf(xla::ffi::ThreadPool& pool) {
  return [&pool](int64_t n, int64_t threads, const std::function<void(int64_t)>& body) {
    if (!SpinPoolParallelFor(threads, n, body)) ParallelForOnPool(&pool, threads, n, body);
  };
}

// The same over freshly started std::threads (for the test-only entry points).
inline void ParallelForOnThreads(int64_t threads, int64_t n,
                                 const std::function<void(int64_t)>& body) {
  std::atomic<int64_t> next{0};
  auto work = [&]() {
    for (int64_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) body(i);
  };
  std::vector<std::thread> pool;
  for (int64_t t = 1; t < std::min(threads, n); ++t) pool.emplace_back(work);
  work();
  for (std::thread& t : pool) t.join();
}

}  // namespace xnorjax
