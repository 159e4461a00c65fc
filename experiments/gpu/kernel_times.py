"""Device time of each kernel a conv launches on a GPU, read from JAX's profiler trace.

The timings of experiments/gpu/check.py are wall times of jitted calls: launch and dispatch costs
are inside them. This script separates them: per bin_vgg16 binary layer, the packed-output
mma.sync conv (its pre-pass kernel and its main kernel), XLA's bfloat16 conv and XLA's int8 conv
each run `--calls` times inside one `jax.profiler.trace`, with an idle gap between ops, and the
trace's GPU kernel events are split at those gaps (one group per op, in the order run). Printed
per op: device microseconds per call, kernels per call, and the time of each kernel name.

  python -m experiments.gpu.kernel_times [--out=DIR] [--calls=20] [--layers=512,512,2,128 ...]

--layers takes C_in,C_out,H[,batch] (default: the 8 distinct layers at batch 128, two at batch
1). Under `ncu`, `--calls=1 --no_trace` runs each op once without the profiler (experiments/gpu/
check.sh does that for one layer with the kernel-name filter of the CUDA kernels).
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments.gpu import check

GAP_S = 0.02  # idle time between ops; the trace is split where the GPU idles longer than half
DEFAULT_LAYERS = [(c, o, hw, 128) for c, o, hw, _ in check.BIN_VGG16] + [(64, 64, 32, 1),
                                                                           (512, 512, 2, 1)]
NON_KERNEL_LINES = ("XLA", "Steps", "Launch", "Source")  # derived lines, not kernel executions


def parse_layer(text: str) -> tuple[int, int, int, int]:
  """'C_in,C_out,H[,batch]' -> (c, o, hw, batch); batch defaults to 128."""
  parts = text.split(",")
  if len(parts) not in (3, 4) or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
    raise ValueError(f"--layers: {text!r} is not C_in,C_out,H[,batch] of positive integers")
  c, o, hw, *batch = (int(p) for p in parts)
  return c, o, hw, (batch[0] if batch else 128)


def kernel_events(profile) -> list[tuple[str, int, int]]:
  """(name, start ns, duration ns) of the events on the GPU planes' kernel lines, by start."""
  events = []
  for plane in profile.planes:
    if not plane.name.startswith("/device:GPU"):
      continue
    for line in plane.lines:
      if line.name.startswith(NON_KERNEL_LINES):
        continue
      events.extend((e.name, int(e.start_ns), int(e.duration_ns)) for e in line.events)
  return sorted(events, key=lambda e: e[1])


def split_at_gaps(events, gap_ns: int) -> list[list[tuple[str, int, int]]]:
  """Groups of consecutive events, a new group wherever the device idled longer than gap_ns."""
  groups, end = [], None
  for event in events:
    if end is None or event[1] - end > gap_ns:
      groups.append([])
    groups[-1].append(event)
    end = event[1] + event[2] if end is None else max(end, event[1] + event[2])
  return groups


def summarize(group, calls: int) -> dict:
  """Device microseconds per call, kernels per call, and microseconds per call by kernel name."""
  by_name = collections.defaultdict(int)
  for name, _, duration in group:
    by_name[name] += duration
  return dict(device_us=sum(by_name.values()) / calls / 1e3, kernels_per_call=len(group) / calls,
              kernels={name: ns / calls / 1e3
                       for name, ns in sorted(by_name.items(), key=lambda kv: -kv[1])})


def layer_ops(rng, c, o, hw, batch, on_gpu: bool):
  """(name, jitted fn, args) for the packed mma.sync conv and XLA's bf16 and int8 convs."""
  problem = check.ConvProblem(rng, batch, hw, hw, c, o, (3, 3), (1, 1), ((1, 1), (1, 1)), 0)
  signs = np.where(problem.x_bits, 1, -1)
  w_hwio = np.transpose(np.where(problem.w_bits, 1, -1), (1, 2, 3, 0))
  packed = (check.ffi_conv(problem, "packed", check.cuda_path_codes()["mma"]) if on_gpu
            else check.public_conv(problem, "packed", "kernel"))
  put = jax.device_put
  return [
      ("xnor_packed_mma", jax.jit(packed), tuple(put(a) for a in problem.operands("packed"))),
      ("xla_bf16", jax.jit(check.xla_conv), (put(jnp.asarray(signs, jnp.bfloat16)),
                                              put(jnp.asarray(w_hwio, jnp.bfloat16)))),
      ("xla_int8", jax.jit(check.xla_int8_conv),
       (put(jnp.asarray(signs, jnp.int8)), put(jnp.asarray(w_hwio, jnp.int8)))),
  ]


def run(layers, calls: int, trace: bool, out: str | None) -> list[dict]:
  on_gpu = jax.default_backend() == "gpu"
  rng = np.random.default_rng(0)
  ops = []
  for c, o, hw, batch in layers:
    for name, fn, args in layer_ops(rng, c, o, hw, batch, on_gpu):
      jax.block_until_ready(fn(*args))  # compile and warm up outside the trace
      ops.append((dict(layer=f"{c}->{o}@{hw}", batch=batch, op=name), fn, args))
  trace_dir = tempfile.mkdtemp(prefix="xnorjax_trace_") if trace else None
  if trace:
    jax.profiler.start_trace(trace_dir)
  for _, fn, args in ops:
    for _ in range(calls):
      jax.block_until_ready(fn(*args))
    time.sleep(GAP_S)
  rows = [dict(meta) for meta, _, _ in ops]
  if not trace:
    return rows
  jax.profiler.stop_trace()
  files = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
  events = kernel_events(jax.profiler.ProfileData.from_file(files[0])) if files else []
  groups = split_at_gaps(events, int(GAP_S * 1e9 / 2))
  if len(groups) != len(ops):
    print(f"kernel_times: {len(events)} kernel events in {len(groups)} groups for {len(ops)} ops;"
          " cannot assign them to ops" + ("" if on_gpu else " (no GPU: no device plane)"))
    return rows
  for row, group in zip(rows, groups):
    row.update(summarize(group, calls))
  if out:
    with open(os.path.join(out, "kernel_times.json"), "w") as f:
      json.dump(rows, f, indent=1)
  return rows


def short_name(kernel: str) -> str:
  """A kernel's name without return type, namespaces, template arguments and parameters."""
  name = re.sub(r"\(anonymous namespace\)::", "", kernel)
  name = re.split(r"[<(]", name, maxsplit=1)[0].split("::")[-1]
  return name.split()[-1] if name.split() else kernel


def table(rows) -> str:
  """Per layer: device us per call of each op, the packed conv's kernels, and its ratios."""
  lines = ["| layer | batch | mma packed (us) | of which (us) | XLA bf16 (us) | XLA int8 (us) |"
           " vs bf16 | vs int8 |", "|---|---:|---:|---|---:|---:|---:|---:|"]
  by_layer = collections.defaultdict(dict)
  for r in rows:
    by_layer[(r["layer"], r["batch"])][r["op"]] = r
  for (layer, batch), ops in by_layer.items():
    if not all("device_us" in ops.get(k, {}) for k in ("xnor_packed_mma", "xla_bf16", "xla_int8")):
      continue
    mma, bf16, int8 = (ops[k]["device_us"] for k in ("xnor_packed_mma", "xla_bf16", "xla_int8"))
    parts = ", ".join(f"{short_name(name)[:32]} {us:.1f}"
                      for name, us in ops["xnor_packed_mma"]["kernels"].items())
    lines.append(f"| {layer} | {batch} | {mma:.1f} | {parts} | {bf16:.1f} | {int8:.1f} |"
                 f" {bf16 / mma:.2f}x | {int8 / mma:.2f}x |")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default=None, help="folder for kernel_times.json")
  parser.add_argument("--calls", type=int, default=20, help="calls of each op in the trace")
  parser.add_argument("--layers", nargs="*", default=None, help="C_in,C_out,H[,batch] ...")
  parser.add_argument("--no_trace", action="store_true", help="run the ops only (under ncu)")
  args = parser.parse_args(argv)
  if args.calls < 1:
    parser.error(f"--calls must be at least 1, got {args.calls}")
  try:
    layers = [parse_layer(t) for t in args.layers] if args.layers else DEFAULT_LAYERS
  except ValueError as e:
    parser.error(str(e))
  if args.out:
    os.makedirs(args.out, exist_ok=True)
  rows = run(layers, args.calls, not args.no_trace, args.out)
  for r in rows:
    print("  " + json.dumps({k: v for k, v in r.items() if k != "kernels"}), flush=True)
  print(table(rows))


if __name__ == "__main__":
  main()
