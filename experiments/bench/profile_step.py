"""Where a training step's time goes: per-op times of one model's jitted train step on the CPU.

  python -m experiments.bench.profile_step --model=vgg16
  python -m experiments.bench.profile_step --model=bin_small_cnn --batch_size=32 --top=10

Traces `--steps` train steps (experiments/bench/synthetic_steps.py, after compilation and warm-up) with
`jax.profiler` and reads the per-op durations from its Perfetto trace. Prints, per step (each
op's median over the steps), the time of each kind of op (an FFI call counts as its target, e.g.
xnorjax_winograd_conv; an XLA op as its name without the number, e.g. copy_bitcast_fusion),
then the `--top` single ops with the shapes they produce (from the compiled HLO). The profiler
slows steps (by 10-30% here), so read shares, not absolute times, and decide with whole-step
timings (experiments/bench/conv_policy.py, experiments/bench/train.py). The profile of a vgg16
step is how the RGB layer's slow kernel gradient was found (docs/float_conv.md).
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import statistics
import tempfile
import time

from absl import app
from absl import flags
import jax

from experiments import cli
from experiments import huge_pages
from experiments.bench import synthetic_steps

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\S+) ")
_FFI_TARGET = re.compile(r"custom_call_target=\"(\w+)\"")


def hlo_ops(hlo_text: str) -> tuple[dict[str, str], dict[str, str]]:
  """({instruction: result shape}, {instruction: FFI target}) of a compiled module's text."""
  shapes, targets = {}, {}
  for line in hlo_text.splitlines():
    match = _INSTRUCTION.match(line)
    if match:
      shapes[match.group(1)] = match.group(2)
      target = _FFI_TARGET.search(line)
      if target:
        targets[match.group(1)] = target.group(1)
  return shapes, targets


def op_times(trace_events, steps: int, ops) -> dict[str, float]:
  """Milliseconds per step of each instruction of `ops` (names) in complete ("X") trace events:
  the median over the `steps` traced steps (an op that runs k times a step has k * steps events,
  taken k at a time in time order), so that one slow step (page faults, a neighbour's burst on a
  shared machine: 30 ms once for a 2 ms fusion here) does not stand out as a slow op; the mean
  where the count is not a multiple of `steps`. The runtime's own events (thread pools, buffers,
  Python frames) are left out."""
  durations = collections.defaultdict(list)
  events = [e for e in trace_events if e.get("ph") == "X" and e.get("name") in ops]
  for event in sorted(events, key=lambda e: e.get("ts", 0)):
    durations[event["name"]].append(event["dur"] / 1e3)
  times = {}
  for name, ds in durations.items():
    if len(ds) % steps:
      times[name] = sum(ds) / steps
    else:
      per_step = len(ds) // steps
      times[name] = statistics.median(sum(ds[i:i + per_step]) for i in range(0, len(ds), per_step))
  return times


def kind_of(op: str, targets: dict[str, str]) -> str:
  """An op's kind: its FFI target, else its name without the trailing number."""
  return targets.get(op) or re.sub(r"\.\d+$", "", op)


def profile(model: str, batch_size: int, steps: int, overrides=()) -> tuple[dict, dict, dict, float]:
  """(ms per step per op, shapes, FFI targets, wall ms per step under the profiler)."""
  s = synthetic_steps.build_steps(model, batch_size, overrides)
  compiled, state = synthetic_steps.compile_train_step(s)
  shapes, targets = hlo_ops(compiled.as_text())
  with tempfile.TemporaryDirectory() as directory:
    start = time.perf_counter()
    with jax.profiler.trace(directory, create_perfetto_trace=True):
      for _ in range(steps):
        state, metrics = compiled(state, s.images, s.labels)
      jax.block_until_ready(metrics)
    wall_ms = (time.perf_counter() - start) / steps * 1e3
    paths = glob.glob(os.path.join(directory, "**", "perfetto_trace.json.gz"), recursive=True)
    if not paths:
      raise RuntimeError(f"jax.profiler wrote no perfetto_trace.json.gz under {directory}")
    with gzip.open(paths[0], "rt") as f:
      trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  return op_times(events, steps, shapes), shapes, targets, wall_ms


def define_flags():
  """The command line's flags (defined only when run as a program: the tests import this module
  alongside others that define flags of the same names)."""
  flags.DEFINE_string("model", "vgg16", "Model (its preset, else the defaults).")
  flags.DEFINE_integer("batch_size", 128, "Global batch size.")
  flags.DEFINE_integer("steps", 5, "Traced steps.")
  flags.DEFINE_integer("top", 25, "Single ops to list.")
  flags.DEFINE_list("config_overrides", [], "key=value config overrides.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  args = flags.FLAGS
  if args.steps < 1 or args.batch_size < 1 or args.top < 0:
    raise app.UsageError("--steps and --batch_size must be positive, --top not negative")
  try:
    times, shapes, targets, wall_ms = profile(args.model, args.batch_size, args.steps,
                                              args.config_overrides)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  kinds = collections.Counter()
  for op, ms in times.items():
    kinds[kind_of(op, targets)] += ms
  total = sum(times.values())
  print(f"{args.model}, batch {args.batch_size}, {args.steps} traced steps: {wall_ms:.1f} ms "
        f"per step under the profiler, {total:.1f} ms of ops (ops of several threads may overlap)")
  print("\nper kind of op, ms per step (each op's median over the traced steps):")
  for kind, ms in kinds.most_common():
    if ms >= 0.05:
      print(f"  {ms:8.2f}  {100 * ms / total:5.1f}%  {kind}")
  print(f"\nthe {args.top} longest ops, ms per step (median over the traced steps):")
  for op, ms in sorted(times.items(), key=lambda item: -item[1])[:args.top]:
    print(f"  {ms:8.2f}  {op:34s} {kind_of(op, targets):34s} {shapes.get(op, '?')}")


if __name__ == "__main__":
  huge_pages.reexec_with_huge_pages()
  define_flags()
  cli.run_main(main)
