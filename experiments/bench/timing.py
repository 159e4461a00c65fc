"""Wall-clock timing shared by the benchmarks: every timed call blocks until its result is ready.

The machines are shared and noisy, so a benchmark compares methods timed in one process, in
interleaved rounds (`interleaved_times`), and reports ratios; `call_times` and `seconds_per_call`
time one method.
"""

from __future__ import annotations

import time
from typing import Callable

import jax


def timed_call(fn: Callable[[], object]) -> tuple[float, float]:
  """(wall seconds, CPU seconds of this process, all threads) of one call of fn()."""
  wall, cpu = time.perf_counter(), time.process_time()
  jax.block_until_ready(fn())
  return time.perf_counter() - wall, time.process_time() - cpu


def call_times(fn: Callable[[], object], repeats: int, *, warmup: int = 1) -> list[float]:
  """Wall seconds of each of `repeats` calls of fn(), after `warmup` untimed calls (compilation)."""
  for _ in range(warmup):
    jax.block_until_ready(fn())
  return [timed_call(fn)[0] for _ in range(repeats)]


def seconds_per_call(fn: Callable[[], object], min_seconds: float) -> float:
  """Mean wall seconds per call of fn(), calls repeated until at least `min_seconds` have passed."""
  calls, start = 0, time.perf_counter()
  while True:
    jax.block_until_ready(fn())
    calls += 1
    elapsed = time.perf_counter() - start
    if elapsed >= min_seconds:
      return elapsed / calls


def interleaved_times(fns: dict[str, Callable[[], object]], rounds: int, *,
                      alternate: bool = False, warm_each: bool = False) -> dict[str, list[float]]:
  """Wall seconds per call of each method over `rounds` rounds, one timed call of each per round.

  Every method is called once untimed first (compilation). `alternate` reverses the order of the
  methods every other round (so that no method always follows the same one); `warm_each` precedes
  each timed call by an untimed call of the same method (warm caches for every method alike).
  """
  for fn in fns.values():
    jax.block_until_ready(fn())
  times = {name: [] for name in fns}
  for r in range(rounds):
    names = list(fns)[::-1] if alternate and r % 2 else list(fns)
    for name in names:
      if warm_each:
        jax.block_until_ready(fns[name]())
      times[name].append(timed_call(fns[name])[0])
  return times
