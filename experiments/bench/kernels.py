"""Times the packed `xnor_conv` against XLA's float32, bfloat16 and int8 convs on bin_vgg16's layers.

Run: .venv/bin/python -m experiments.bench.kernels [--batches=1,16] [--repeats=7] [--out=PATH]

For each of the 13 binary 3x3 conv layers of bin_vgg16 at CIFAR-10 sizes (32x32 down to 2x2, 64
to 512 channels) and each batch size, on the same +-1 data:
  * xnor:  `xnor_conv` on packed activations and weights packed once (int32 exact dots, SAME,
           zero padding as bin_vgg16 trains with), and its fused variant (alpha scale + packed
           output, what an inference layer emits for the next one);
  * xnor_1t: the same C++ engine called outside XLA on one thread (per-core efficiency);
  * XLA's conv in float32, bfloat16 (float32 accumulation) and int8 (int32 accumulation), each
    as the faster of `lax.conv_general_dilated` and im2col + dot (XLA's conv is pathological on
    maps smaller than the kernel; see docs/float_conv.md), so the baselines are the best
    XLA offers here.
Every method is timed best-of-`repeats` with the methods interleaved (each timed call right after
an untimed one of the same method, so all run with warm caches), in one process: compare the
ratios (the machines are shared; absolute numbers drift). A microbenchmark in the same run measures
the popcount ceiling (XOR + VPOPCNTQ + add on 512-bit registers, all cores). Prints a table and
writes JSON (per layer and aggregated: total MACs / total time over the 13 layers).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from experiments import cli
from experiments import huge_pages
from experiments.bench import timing
import xnorjax
from xnorjax.models import bin_vgg16_conv_shapes
from xnorjax.ops import pack_bits, xnor_conv

_DN = ("NHWC", "HWIO", "NHWC")


def vgg_layers() -> list[tuple[str, int, int, int]]:
  """(name, C_in, C_out, map size) of bin_vgg16's 13 binary 3x3 SAME stride-1 convs."""
  return [(s.name, s.in_channels, s.out_channels, s.input_hw[0])
          for s in bin_vgg16_conv_shapes(image_size=32)]


def _lax_conv(x, k, out_dtype):
  return lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=_DN,
                                  preferred_element_type=out_dtype)


def _im2col_conv(x, k, out_dtype):
  kh, kw, c, o = k.shape
  xp = jnp.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
  h, w = x.shape[1:3]
  cols = jnp.concatenate([xp[:, i:i + h, j:j + w] for i in range(kh) for j in range(kw)], axis=-1)
  return jnp.dot(cols, k.reshape(kh * kw * c, o), preferred_element_type=out_dtype)


def _time_best(fns: dict, args: dict, repeats: int) -> dict:
  """Best-of-`repeats` seconds per method, methods interleaved; each timed call directly follows
  an untimed call of the same method (warm caches for every method alike)."""
  calls = {name: functools.partial(fn, *args[name]) for name, fn in fns.items()}
  return {name: min(t) for name, t in
          timing.interleaved_times(calls, repeats, warm_each=True).items()}


def bench_layer(cin: int, cout: int, hw: int, batch: int, repeats: int, rng) -> dict:
  x = np.where(rng.standard_normal((batch, hw, hw, cin)) >= 0, 1.0, -1.0).astype(np.float32)
  k = np.where(rng.standard_normal((3, 3, cin, cout)) >= 0, 1.0, -1.0).astype(np.float32)
  xp = jax.block_until_ready(pack_bits(x))
  wp = jax.block_until_ready(pack_bits(k, axis=-2))  # weights packed once
  alpha = jnp.asarray(rng.uniform(0.5, 1.5, cout), jnp.float32)
  fns, args = {}, {}
  fns["xnor"] = jax.jit(lambda a, b: xnor_conv(a, b, channels=cin, pad_value=0.0))
  args["xnor"] = (xp, wp)
  fns["xnor_fused"] = jax.jit(lambda a, b, s: xnor_conv(a, b, channels=cin, scale=s,
                                                        pack_output=True))
  args["xnor_fused"] = (xp, wp, alpha)
  # The same engine outside XLA on one thread: its efficiency per core, against the one-thread
  # ceiling (on a shared machine two threads rarely get both cores at once).
  engine = xnorjax.require_extension().xnor
  xp_np, wp_np = np.asarray(xp), np.asarray(wp)
  out_1t = np.empty((batch, hw, hw, cout), np.int32)
  ones = np.ones(cout, np.float32)
  fns["xnor_1t"] = lambda: engine.conv_into(xp_np, wp_np, ones, ones, out_1t, "int32", cin, 1, 1,
                                            1, 1, 1, 1, 0, 0, 1, True)
  args["xnor_1t"] = ()
  for dtype_name, in_dtype, out_dtype in (("f32", jnp.float32, jnp.float32),
                                          ("bf16", jnp.bfloat16, jnp.float32),
                                          ("int8", jnp.int8, jnp.int32)):
    xd, kd = jnp.asarray(x, in_dtype), jnp.asarray(k, in_dtype)
    for form, conv in (("lax", _lax_conv), ("im2col", _im2col_conv)):
      name = f"{dtype_name}_{form}"
      fns[name] = jax.jit(lambda a, b, conv=conv, out_dtype=out_dtype: conv(a, b, out_dtype))
      args[name] = (xd, kd)
  # Every method computes the same integers.
  want = np.asarray(fns["f32_lax"](*args["f32_lax"]))
  for name in ("xnor", "int8_lax", "int8_im2col"):
    np.testing.assert_array_equal(np.asarray(fns[name](*args[name])), want, err_msg=name)
  fns["xnor_1t"]()
  np.testing.assert_array_equal(out_1t, want, err_msg="xnor_1t")
  seconds = _time_best(fns, args, repeats)
  for dtype_name in ("f32", "bf16", "int8"):
    forms = {f: seconds[f"{dtype_name}_{f}"] for f in ("lax", "im2col")}
    best_form = min(forms, key=forms.get)
    seconds[dtype_name] = forms[best_form]
    seconds[f"{dtype_name}_form"] = best_form
  return seconds


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batches", default="1,16")
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--ceiling_windows", type=int, default=40)
  parser.add_argument("--out", default="runs/bench_kernels.json")
  args = parser.parse_args()
  batches = [int(b) for b in args.batches.split(",")]
  ext = xnorjax.require_extension()
  threads = os.cpu_count() or 1
  # Best of short windows, as the timings below are best-of-N (shared machines).
  ceiling = max(ext.xnor.popcount_ceiling(threads, 0.02) for _ in range(args.ceiling_windows))
  ceiling_1 = max(ext.xnor.popcount_ceiling(1, 0.02) for _ in range(args.ceiling_windows))
  isa_names = {code: name for name, code in ext.xnor.ISA_CODES.items()}
  info = {"machine": platform.processor() or platform.machine(), "cpu": _cpu_model(),
          "cores": threads, "jax": jax.__version__, "xnor_isa": isa_names[ext.xnor.auto_isa()],
          "popcount_ceiling_bitmac_per_s": ceiling, "popcount_ceiling_1thread": ceiling_1,
          "load_average_before": os.getloadavg(),
          "glibc_tunables": os.environ.get("GLIBC_TUNABLES", "")}
  print(f"{info['cpu']}, {threads} cores, jax {jax.__version__}, xnor isa {info['xnor_isa']}, "
        f"load average {info['load_average_before'][0]:.1f}")
  print(f"popcount ceiling: {ceiling / 1e12:.2f} T bit-MAC/s on {threads} threads "
        f"({ceiling_1 / 1e12:.2f} on 1)")
  methods = ("xnor", "xnor_fused", "xnor_1t", "f32", "bf16", "int8")
  rng = np.random.default_rng(0)
  results = []
  for batch in batches:
    print(f"\nbatch {batch}: GMAC/s (best XLA formulation per layer in brackets)")
    print(f"{'layer':<14}{'shape':>18}" + "".join(f"{m:>12}" for m in methods)
          + f"{'x/f32':>8}{'x/int8':>8}{'x/ceil':>8}{'1t/ceil1':>9}")
    totals = {m: 0.0 for m in methods}
    total_macs = 0
    for name, cin, cout, hw in vgg_layers():
      macs = batch * hw * hw * cout * 9 * cin
      sec = bench_layer(cin, cout, hw, batch, args.repeats, rng)
      gmacs = {m: macs / sec[m] / 1e9 for m in methods}
      for m in methods:
        totals[m] += sec[m]
      total_macs += macs
      results.append({"batch": batch, "layer": name, "c_in": cin, "c_out": cout, "hw": hw,
                      "macs": macs, "seconds": sec, "gmac_per_s": gmacs})
      shape = f"{cin}->{cout}@{hw}"
      forms = "".join(f"[{sec[d + '_form'][0]}]" for d in ("f32", "bf16", "int8"))
      print(f"{name:<14}{shape:>18}" + "".join(f"{gmacs[m]:>12.1f}" for m in methods)
            + f"{gmacs['xnor'] / gmacs['f32']:>8.1f}{gmacs['xnor'] / gmacs['int8']:>8.2f}"
            + f"{gmacs['xnor'] * 1e9 / ceiling:>8.2f}{gmacs['xnor_1t'] * 1e9 / ceiling_1:>9.2f}"
            + f"  {forms}")
    agg = {m: total_macs / totals[m] / 1e9 for m in methods}
    print(f"{'all 13 layers':<32}" + "".join(f"{agg[m]:>12.1f}" for m in methods)
          + f"{agg['xnor'] / agg['f32']:>8.1f}{agg['xnor'] / agg['int8']:>8.2f}"
          + f"{agg['xnor'] * 1e9 / ceiling:>8.2f}{agg['xnor_1t'] * 1e9 / ceiling_1:>9.2f}")
    results.append({"batch": batch, "layer": "all", "macs": total_macs, "seconds": totals,
                    "gmac_per_s": agg, "xnor_over_f32": agg["xnor"] / agg["f32"],
                    "xnor_over_int8": agg["xnor"] / agg["int8"],
                    "xnor_over_ceiling": agg["xnor"] * 1e9 / ceiling,
                    "xnor_1thread_over_1thread_ceiling": agg["xnor_1t"] * 1e9 / ceiling_1})
  info["load_average_after"] = os.getloadavg()
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"info": info, "results": results}, f, indent=1)
  print(f"\nwrote {args.out}")


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor()


if __name__ == "__main__":
  huge_pages.reexec_with_huge_pages()
  cli.run_main(main, absl_flags=False)
