"""The CUDA XNOR-popcount kernels on a GPU: exactness against XLA, then speed against XLA's convs.

Run by experiments/gpu/check.sh (which builds the extension first) on a CUDA machine:
  python -m experiments.gpu.check [--out=DIR] [--budget_s=300] [--smoke]

1. Exactness: every bin_vgg16 binary layer shape and odd shapes (channel tails, partial tiles,
   strides, asymmetric padding, pad values -1 / 0 / +1, maps smaller than the kernel), random
   data, each result kind (i32 / f32 / packed) on each CUDA path (the `impl` codes of
   `cuda_path_codes`: simple, tensor cores mma.sync, warpgroup tiling (wgmma on an sm_90a build),
   the "_hwio" target reading the weights in the public layout, and the public op's auto
   dispatch), compared for equality with the reference conv of the same +-1 values
   (xnor_conv(..., implementation="reference")). Scale and bias are dyadic,
   so the float epilogue is exact with or without fused multiply-add.
2. Timing, batch 1 and 128, per distinct bin_vgg16 binary layer: XLA's bfloat16 conv, XLA's int8
   conv (int32 accumulation, then a cast to float32: the form XLA gives cuDNN), and the packed
   kernels (packed input; i32 output, and the fused packed output a BNN layer feeds the next; the
   packed output also on the wgmma and the simple paths).
   Each timed call runs the op on R different inputs inside one jit (dispatch amortized, no
   common-subexpression elimination possible); the best of several calls, divided by R.
3. A short table last (also written, with all numbers, to DIR/gpu_check.json and .txt).
The tensor-core paths ("mma" and "wgmma") are first tried on a small conv in child processes
(canaries): should their code fault, only that process's CUDA context is lost, and the main run
leaves the path out (and exits non-zero). Without the mma.sync path, the "_hwio" target and the
auto dispatch (which take it) are left out too.

--smoke runs a tiny version on any backend (on CPU the paths are the host emulation,
xnorjax._cuda_host), to check this script without a GPU.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import subprocess
import sys
import time
import traceback

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from experiments.bench import timing as timing_lib
import xnorjax
from xnorjax.ops import pack_bits
from xnorjax.ops import xnor as xnor_lib

PEAK_BIT_MACS = 7.9e15  # H200 1-bit tensor-core peak (AND-popc), inferred
CANARIES = ("mma", "wgmma")  # the tensor-core paths, tried in a child process first
KINDS = ("i32", "f32", "packed")

# bin_vgg16's 13 binary 3x3 SAME stride-1 layers as (C_in, C_out, H = W, count).
BIN_VGG16 = [(64, 64, 32, 2), (64, 128, 16, 1), (128, 128, 16, 1), (128, 256, 8, 1),
             (256, 256, 8, 2), (256, 512, 4, 1), (512, 512, 4, 2), (512, 512, 2, 3)]

# (n, h, w, c, o, (kh, kw), strides, pads, pad_value)
ODD_SHAPES = [
    (2, 9, 7, 64, 64, (3, 3), (1, 1), ((1, 1), (1, 1)), 0),
    (1, 10, 11, 33, 70, (3, 3), (2, 1), ((1, 2), (0, 1)), -1),
    (3, 5, 6, 100, 9, (3, 2), (1, 2), ((2, 0), (1, 1)), 1),
    (2, 1, 1, 31, 33, (3, 3), (1, 1), ((1, 1), (1, 1)), 1),
    (1, 7, 7, 96, 130, (1, 1), (1, 1), ((0, 0), (0, 0)), 0),
    (1, 6, 5, 160, 17, (5, 5), (2, 2), ((3, 3), (4, 1)), 0),
    (5, 3, 4, 1, 5, (2, 2), (1, 1), ((1, 0), (0, 1)), -1),
    (7, 13, 13, 200, 100, (3, 3), (1, 1), ((1, 1), (1, 1)), -1),
    (3, 16, 16, 1024, 96, (3, 3), (2, 2), ((1, 1), (1, 1)), 0),
]
DENSE_SHAPES = [(1, 1, 1), (3, 300, 70), (200, 2048, 130), (128, 4096, 1000)]


# ----------------------------------------------------------------------------------------------
# Problems and the calls under test.


def _pack(bits: np.ndarray) -> np.ndarray:
  """Bools packed along the last axis by the library's pure-JAX packing (bit j of word j // 32,
  zero tail; tests/kernels/test_packing.py checks it against numpy), as a numpy array."""
  return np.asarray(pack_bits(bits, implementation="reference"))


def _dyadic(rng, size):
  return (rng.integers(-64, 65, size) / 16).astype(np.float32)


class ConvProblem:
  """Packed operands in the FFI layout, their +-1 float forms, attributes."""

  def __init__(self, rng, n, h, w, c, o, k, strides, pads, pad_value):
    kh, kw = k
    self.channels, self.out_channels = c, o
    self.x_bits = rng.random((n, h, w, c)) < 0.5
    self.w_bits = rng.random((o, kh, kw, c)) < 0.5
    self.x = _pack(self.x_bits)
    self.w = _pack(self.w_bits)  # [O, KH, KW, Cw]
    self.scale, self.bias = _dyadic(rng, o), _dyadic(rng, o)
    self.strides, self.pads, self.pad_value = strides, pads, pad_value
    self.attrs = dict(channels=c, stride_h=strides[0], stride_w=strides[1], pad_top=pads[0][0],
                      pad_bottom=pads[0][1], pad_left=pads[1][0], pad_right=pads[1][1],
                      pad_value=pad_value)
    self.out_hw = tuple((size + p[0] + p[1] - kk) // s + 1
                        for size, p, kk, s in zip((h, w), pads, k, strides))

  def result_type(self, kind):
    last = -(-self.out_channels // 32) if kind == "packed" else self.out_channels
    dtype = {"i32": jnp.int32, "f32": jnp.float32, "packed": jnp.uint32}[kind]
    return jax.ShapeDtypeStruct((self.x.shape[0],) + self.out_hw + (last,), dtype)

  def operands(self, kind):
    return (self.x, self.w) if kind == "i32" else (self.x, self.w, self.scale, self.bias)

  def public_kwargs(self, kind):
    kwargs = dict(strides=self.strides, padding=self.pads, pad_value=float(self.pad_value),
                  channels=self.channels)
    if kind != "i32":
      kwargs.update(scale=self.scale, bias=self.bias, pack_output=kind == "packed")
    return kwargs

  def hwio(self, w):
    return jnp.transpose(w, (1, 2, 3, 0))


@functools.cache
def cuda_path_codes() -> dict[str, int]:
  """Path name -> the `impl` attribute value that forces it, as the CUDA module defines them
  (ffi/cuda/xnor_shape.h; the host emulation shares the header, for runs without a GPU build)."""
  try:
    from xnorjax import _ffi_cuda as cuda_module  # pylint: disable=g-import-not-at-top
  except ImportError:
    from xnorjax import _cuda_host as cuda_module  # pylint: disable=g-import-not-at-top
  return {"simple": cuda_module.IMPL_SIMPLE, "mma": cuda_module.IMPL_MMA,
          "wgmma": cuda_module.IMPL_WGMMA,
          "auto": xnorjax.require_extension().xnor.ISA_CODES["auto"]}


def ffi_conv(problem: ConvProblem, kind: str, impl: int, hwio: bool = False):
  """The CUDA target called directly with a CUDA-only impl value (a function of the operands);
  hwio: the "_hwio" target, which reads the weights in the public packed layout (transposed here
  from the problem's [O, KH, KW, Cw])."""
  n, h, w, cw = problem.x.shape
  o, kh, kw, _ = problem.w.shape
  call = xnor_lib.ffi_kernel_call(f"xnorjax_xnor_conv_{kind}" + ("_hwio" if hwio else ""),
                                  problem.result_type(kind), scratch=(n, h, w, cw, kh, kw, o))
  attrs = {k: np.int64(v) for k, v in problem.attrs.items()}
  if hwio:
    return lambda x, w, *rest: call(x, problem.hwio(w), *rest, **attrs, impl=np.int64(impl))
  return lambda *ops: call(*ops, **attrs, impl=np.int64(impl))


def public_conv(problem: ConvProblem, kind: str, implementation: str):
  """xnorjax.ops.xnor_conv (packed operands, HWIO-packed kernel): "kernel" or "reference"."""
  kwargs = problem.public_kwargs(kind)

  def run(x, w, *_):
    return xnor_lib.xnor_conv(x, problem.hwio(w), implementation=implementation, **kwargs)

  return run


def emulated_conv(problem: ConvProblem, kind: str, path: str):
  """The CUDA path run by the host emulation (smoke mode without a GPU)."""
  from xnorjax import _cuda_host  # pylint: disable=g-import-not-at-top

  def run(*ops):
    ops = [np.asarray(a) for a in ops]
    scale, bias = (ops[2], ops[3]) if kind != "i32" else (None, None)
    return _cuda_host.conv(ops[0], ops[1], scale, bias, **problem.attrs, kind=kind,
                           path=path)[0]

  return run


def paths_under_test(on_gpu: bool, failed: frozenset[str] = frozenset()):
  """Name -> (problem, kind) -> conv function; `failed`: canaries that failed ("mma", "wgmma")."""
  if on_gpu:
    codes = cuda_path_codes()
    paths = {name: (lambda p, k, impl=impl: jax.jit(ffi_conv(p, k, impl)))
             for name, impl in codes.items() if name != "auto" and name not in failed}
    if "mma" not in failed:
      paths |= {"mma_hwio": lambda p, k: jax.jit(ffi_conv(p, k, codes["mma"], hwio=True)),
                "auto": lambda p, k: jax.jit(public_conv(p, k, "kernel"))}
    return paths
  return {"simple": lambda p, k: emulated_conv(p, k, "simple"),
          "mma": lambda p, k: emulated_conv(p, k, "mma"),
          "wgmma": lambda p, k: emulated_conv(p, k, "wgmma"),
          "auto": lambda p, k: jax.jit(public_conv(p, k, "kernel"))}


# ----------------------------------------------------------------------------------------------
# 1. Exactness.


def _compare(run, want):
  """(exact, mismatch count) of run()'s result against `want`; -1 for a wrong shape, and
  (False, "error: ...") if run() raises (a failing path must not stop the sweep)."""
  try:
    got = np.asarray(run())
  except Exception as e:  # pylint: disable=broad-except
    return False, f"error: {e}"[:300]
  if got.shape != want.shape:
    return False, -1
  mismatches = int(np.sum(got != want))
  return mismatches == 0, mismatches


def exactness(rng, on_gpu: bool, smoke: bool, deadline: float,
               failed: frozenset[str] = frozenset()):
  cases = []
  layers = BIN_VGG16[:2] if smoke else BIN_VGG16
  for i, (c, o, hw, _) in enumerate(layers):
    cases.append((f"vgg {c}->{o}@{hw}", (2, hw, hw, c, o, (3, 3), (1, 1), ((1, 1), (1, 1)),
                                         (0, -1, 1)[i % 3])))
  for shape in (ODD_SHAPES[:3] if smoke else ODD_SHAPES):
    cases.append(("odd " + "x".join(map(str, shape[:5])), shape))
  paths = paths_under_test(on_gpu, failed)
  results, failures = [], 0
  for name, shape in cases:
    if time.time() > deadline:
      results.append(dict(case=name, skipped="time budget"))
      continue
    problem = ConvProblem(rng, *shape)
    for kind in KINDS:
      ops = problem.operands(kind)
      want = np.asarray(jax.jit(public_conv(problem, kind, "reference"))(*ops))
      for path, make in paths.items():
        ok, mismatches = _compare(lambda: make(problem, kind)(*ops), want)
        failures += not ok
        results.append(dict(case=name, kind=kind, path=path, exact=ok, mismatches=mismatches))
        if not ok:
          print(f"  MISMATCH {name} {kind} {path}: {mismatches}", flush=True)
  for m, k, n in (DENSE_SHAPES[:2] if smoke else DENSE_SHAPES):
    if time.time() > deadline:
      results.append(dict(case=f"dense {m}x{k}x{n}", skipped="time budget"))
      continue
    x = _pack(rng.random((m, k)) < 0.5)
    w = _pack(rng.random((k, n)).T < 0.5)  # [N, Kw]
    scale, bias = _dyadic(rng, n), _dyadic(rng, n)
    for kind in KINDS:
      kw = dict(features=k)
      if kind != "i32":
        kw.update(scale=scale, bias=bias, pack_output=kind == "packed")
      want = np.asarray(xnor_lib.xnor_dense(x, w.T, implementation="reference", **kw))
      ok, mismatches = _compare(
          lambda kw=kw: xnor_lib.xnor_dense(x, w.T, implementation="kernel", **kw), want)
      failures += not ok
      results.append(dict(case=f"dense {m}x{k}x{n}", kind=kind, path="auto", exact=ok,
                          mismatches=mismatches))
      if not ok:
        print(f"  MISMATCH dense {m}x{k}x{n} {kind}: {mismatches}", flush=True)
  checked = sum(1 for r in results if "exact" in r)
  skipped = sum(1 for r in results if "skipped" in r)
  print(f"exactness: {checked - failures}/{checked} exact; {skipped} cases skipped (time budget)",
        flush=True)
  return results, failures


# ----------------------------------------------------------------------------------------------
# 2. Timing.


def _time_per_op(fn, args, repeats_in_jit, calls):
  return min(timing_lib.call_times(lambda: fn(*args), calls)) / repeats_in_jit


_CONV_LAYOUT = ("NHWC", "HWIO", "NHWC")


def xla_conv(x, w):
  """XLA's 3x3 SAME stride-1 conv, NHWC x HWIO, in the operands' dtype: the float baseline."""
  return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=_CONV_LAYOUT)


def xla_int8_conv(x, w):
  """XLA's int8 conv with int32 accumulation, cast to float32: the form XLA gives cuDNN."""
  return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=_CONV_LAYOUT,
                                  preferred_element_type=jnp.int32).astype(jnp.float32)


def _repeated(op, reps):
  """jit of op applied to each of `reps` inputs (a tuple), weights shared: all results returned."""
  return jax.jit(lambda xs, *rest: tuple(op(x, *rest) for x in xs))


def timing(rng, on_gpu: bool, smoke: bool, deadline: float,
           failed: frozenset[str] = frozenset()):
  layers = [(64, 64, 8, 2), (128, 128, 4, 1)] if smoke else BIN_VGG16
  batches = (2, 1) if smoke else (128, 1)  # the batch the targets are about first
  calls = 2 if smoke else 5
  rows = []
  device = jax.devices()[0]
  for batch in batches:
    for c, o, hw, count in layers:
      row = dict(layer=f"{c}->{o}@{hw}", c=c, o=o, hw=hw, count=count, batch=batch)
      rows.append(row)
      if time.time() > deadline:
        row["skipped"] = "time budget"
        continue
      reps = 2 if smoke else (64 if batch == 1 else 16)
      bit_macs = batch * hw * hw * o * 9 * c
      row["bit_macs"] = bit_macs
      problem = ConvProblem(rng, batch, hw, hw, c, o, (3, 3), (1, 1), ((1, 1), (1, 1)), 0)
      signs = lambda bits: np.where(bits, 1, -1)  # noqa: E731

      def measure(key, make, row=row):
        """row[key] = microseconds per op of make()'s (fn, args); errors recorded, not raised."""
        try:
          fn, args = make()
          row[key] = 1e6 * _time_per_op(fn, args, reps, calls)
          return fn, args
        except Exception as e:  # pylint: disable=broad-except
          row[key.replace("_us", "_error")] = f"{type(e).__name__}: {e}"[:400]
          traceback.print_exc()
          return None, None

      # XLA bfloat16 conv, and XLA int8 conv (int32 accumulation, cast to float32).
      xs = tuple(jax.device_put(jnp.asarray(signs(rng.random((batch, hw, hw, c)) < 0.5),
                                            jnp.bfloat16), device) for _ in range(reps))
      wb = jax.device_put(jnp.asarray(np.transpose(signs(problem.w_bits), (1, 2, 3, 0)),
                                      jnp.bfloat16), device)
      measure("bf16_us", lambda: (_repeated(xla_conv, reps), (xs, wb)))
      measure("int8_us", lambda: (_repeated(xla_int8_conv, reps),
                                  (tuple(x.astype(jnp.int8) for x in xs), wb.astype(jnp.int8))))
      del xs
      # Packed kernels: packed input (as a previous fused layer leaves it), packed weights.
      xps = tuple(jax.device_put(_pack(rng.random((batch, hw, hw, c)) < 0.5), device)
                  for _ in range(reps))
      wp = jax.device_put(problem.w, device)
      scale = jax.device_put(problem.scale, device)
      bias = jax.device_put(problem.bias, device)
      codes = cuda_path_codes()
      variants = [("xnor_packed_us", "packed", "mma"), ("xnor_i32_us", "i32", "mma"),
                  ("wgmma_packed_us", "packed", "wgmma"),
                  ("simple_packed_us", "packed", "simple")]
      variants = [(key, kind, codes[path]) for key, kind, path in variants if path not in failed]
      for key, kind, impl in variants:
        # On CPU (smoke) the CPU kernels through the public op stand in for the CUDA paths.
        op = ffi_conv(problem, kind, impl) if on_gpu else public_conv(problem, kind, "kernel")
        args = (xps, wp) if kind == "i32" else (xps, wp, scale, bias)
        fn, args = measure(key, lambda op=op, args=args: (_repeated(op, reps), args))
        if fn is not None and key != "simple_packed_us":  # exact at this batch too
          try:
            got = np.asarray(fn(*args)[0])
            ref_args = (xps[0],) + args[1:]
            want = np.asarray(jax.jit(public_conv(problem, kind, "reference"))(*ref_args))
            row[key.replace("_us", "_exact")] = bool(np.array_equal(got, want))
          except Exception as e:  # pylint: disable=broad-except
            row[key.replace("_us", "_exact")] = f"error: {e}"[:300]
      if "xnor_packed_us" in row:
        row["bit_mac_per_s"] = bit_macs / (row["xnor_packed_us"] * 1e-6)
        row["peak_fraction"] = row["bit_mac_per_s"] / PEAK_BIT_MACS
        for key, name in (("bf16_us", "vs_bf16"), ("int8_us", "vs_int8")):
          if key in row:
            row[name] = row[key] / row["xnor_packed_us"]
      print("  " + json.dumps({k: (round(v, 2) if isinstance(v, float) else v)
                               for k, v in row.items()}), flush=True)
  return rows


def _aggregate(rows, batch):
  """Totals over the 13 layers (each distinct shape times its count) at one batch size."""
  done = [r for r in rows if r["batch"] == batch and
          all(k in r for k in ("xnor_packed_us", "bf16_us", "int8_us"))]
  if not done:
    return None
  total = lambda key: sum(r[key] * r["count"] for r in done)  # noqa: E731
  agg = dict(batch=batch, layers=sum(r["count"] for r in done))
  for key in ("bf16_us", "int8_us", "xnor_i32_us", "xnor_packed_us", "wgmma_packed_us",
              "simple_packed_us"):
    if all(key in r for r in done):
      agg[key] = total(key)
  agg["vs_bf16"] = agg["bf16_us"] / agg["xnor_packed_us"]
  agg["vs_int8"] = agg["int8_us"] / agg["xnor_packed_us"]
  agg["peak_fraction"] = (sum(r["bit_macs"] * r["count"] for r in done) /
                          (agg["xnor_packed_us"] * 1e-6) / PEAK_BIT_MACS)
  return agg


def table(rows, exact_failures, exact_checked, calls, env, exact_skipped=0) -> str:
  nan = float("nan")
  lines = []
  hdr = (f"{'layer':>14} {'N':>4} {'bf16 us':>9} {'int8 us':>9} {'xnor i32':>9} "
         f"{'xnor pk':>9} {'wgmma pk':>9} {'simple pk':>9} {'x bf16':>7} {'x int8':>7} "
         f"{'% peak':>7} exact")
  lines.append(hdr)
  for r in rows:
    if "skipped" in r:
      lines.append(f"{r['layer']:>14} {r['batch']:>4}  skipped ({r['skipped']})")
      continue
    exact_keys = [k for k in ("xnor_i32_exact", "xnor_packed_exact", "wgmma_packed_exact")
                  if k in r or k != "wgmma_packed_exact"]
    exact = "yes" if all(r.get(k) is True for k in exact_keys) else "NO"
    lines.append(
        f"{r['layer']:>14} {r['batch']:>4} {r.get('bf16_us', nan):9.1f} "
        f"{r.get('int8_us', nan):9.1f} {r.get('xnor_i32_us', nan):9.1f} "
        f"{r.get('xnor_packed_us', nan):9.1f} {r.get('wgmma_packed_us', nan):9.1f} "
        f"{r.get('simple_packed_us', nan):9.1f} {r.get('vs_bf16', nan):7.2f} "
        f"{r.get('vs_int8', nan):7.2f} {100 * r.get('peak_fraction', nan):7.2f} {exact}")
  for batch in sorted({r["batch"] for r in rows}, reverse=True):
    agg = _aggregate(rows, batch)
    if agg:
      lines.append(
          f"{'all ' + str(agg['layers']) + ' layers':>14} {batch:>4} {agg['bf16_us']:9.1f} "
          f"{agg['int8_us']:9.1f} {agg.get('xnor_i32_us', nan):9.1f} "
          f"{agg['xnor_packed_us']:9.1f} {agg.get('wgmma_packed_us', nan):9.1f} "
          f"{agg.get('simple_packed_us', nan):9.1f} "
          f"{agg['vs_bf16']:7.2f} {agg['vs_int8']:7.2f} {100 * agg['peak_fraction']:7.2f}")
  errors = sorted({f"{k}: {v}" for r in rows for k, v in r.items() if k.endswith("_error")})
  lines.extend(f"error {e}" for e in errors[:5])
  for name in CANARIES:
    if f"{name}_canary" in env:
      result = env[f"{name}_canary"]
      loaded = (f"sm_90a code loaded = {env['wgmma_compiled_for_device']}, "
                if name == "wgmma" else "")
      lines.append(f"{name} (impl={cuda_path_codes()[name]}): {loaded}canary vs the simple path: {result}"
                   + ("" if result == "ok" else " (left out of the sweep and timing)"))
  coverage = (f"{exact_skipped} cases skipped (time budget)" if exact_skipped
              else "all paths, kinds, shapes")
  lines.append(f"exactness vs XLA: {exact_checked - exact_failures}/{exact_checked} exact "
               f"({coverage}); times per layer call in microseconds (best of "
               f"{calls}); 'xnor' = mma.sync path; 'x bf16' / 'x int8' / '% peak' (of "
               f"{PEAK_BIT_MACS / 1e15:.1f} P bit-MAC/s) for the xnor packed column.")
  return "\n".join(lines)


def canary(name: str) -> int:
  """A small conv on tensor-core path `name` ("mma", "wgmma") against the simple path; the exit
  status.

  Run in a child process first: should the unverified code fault, it takes only that process's
  CUDA context down, and the main run leaves the path out.
  """
  xnorjax.require_extension()
  problem = ConvProblem(np.random.default_rng(0), 2, 9, 7, 64, 64, (3, 3), (1, 1),
                        ((1, 1), (1, 1)), 0)
  ops = problem.operands("i32")
  codes = cuda_path_codes()
  got = np.asarray(jax.jit(ffi_conv(problem, "i32", codes[name]))(*ops))
  want = np.asarray(jax.jit(ffi_conv(problem, "i32", codes["simple"]))(*ops))
  print(f"{name} canary: {int(np.sum(got != want))} of {got.size} outputs differ", flush=True)
  return 0 if np.array_equal(got, want) else 3


def _run_canary(name: str, timeout_s: float = 120.0) -> str:
  try:
    # The parent holds XLA's preallocated GPU memory: the child allocates on demand.
    child_env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
    done = subprocess.run([sys.executable, "-m", "experiments.gpu.check", f"--canary={name}"],
                          capture_output=True, text=True, timeout=timeout_s, check=False,
                          env=child_env)
  except subprocess.TimeoutExpired:
    return "timed out"
  tail = (done.stdout + done.stderr).strip().splitlines()[-1:] or [""]
  return "ok" if done.returncode == 0 else f"failed (rc={done.returncode}): {tail[0][:200]}"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default=os.environ.get("OUT", "/tmp/xnorjax_gpu_check"))
  parser.add_argument("--budget_s", type=float, default=300.0,
                      help="stop starting new cases after this many seconds")
  parser.add_argument("--smoke", action="store_true", help="tiny run on any backend")
  parser.add_argument("--canary", choices=CANARIES,
                      help="only check this path on a small conv (run in a child process)")
  args = parser.parse_args(argv)
  if args.canary:
    return canary(args.canary)
  start = time.time()
  os.makedirs(args.out, exist_ok=True)
  xnorjax.require_extension()
  on_gpu = jax.default_backend() == "gpu"
  if not on_gpu and not args.smoke:
    sys.exit("gpu_check: no GPU (jax.default_backend() == %r); use --smoke" % jax.default_backend())
  env = dict(jax=jax.__version__, backend=jax.default_backend(),
             devices=[str(d) for d in jax.devices()], python=platform.python_version())
  if on_gpu:
    from xnorjax import _ffi_cuda  # pylint: disable=g-import-not-at-top
    env["device_kind"] = jax.devices()[0].device_kind
    # 1: the loaded kernels are the sm_90a build, so impl=102 runs wgmma (else its mma.sync twin).
    env["wgmma_compiled_for_device"] = _ffi_cuda.wgmma_compiled_for_device()
    for name in CANARIES:
      env[f"{name}_canary"] = _run_canary(name)
  failed = frozenset(name for name in CANARIES if env.get(f"{name}_canary", "ok") != "ok")
  print("environment:", json.dumps(env), flush=True)
  rng = np.random.default_rng(int(time.time()))
  # Exactness gets up to 35% of the budget; timing the rest.
  results, failures = exactness(rng, on_gpu, args.smoke, start + 0.35 * args.budget_s,
                                failed)
  checked = sum(1 for r in results if "exact" in r)
  print(f"[{time.time() - start:.0f}s] timing", flush=True)
  rows = timing(rng, on_gpu, args.smoke, start + args.budget_s, failed)
  skipped = sum(1 for r in results if "skipped" in r)
  text = table(rows, failures, checked, 2 if args.smoke else 5, env, skipped)
  report = dict(environment=env, exactness=results, timing=rows,
                aggregate=[_aggregate(rows, b) for b in sorted({r["batch"] for r in rows})],
                seconds=time.time() - start)
  with open(os.path.join(args.out, "gpu_check.json"), "w") as f:
    json.dump(report, f, indent=1, default=str)
  with open(os.path.join(args.out, "gpu_check.txt"), "w") as f:
    f.write(text + "\n")
  print(f"\n[{time.time() - start:.0f}s] gpu_check table ({env.get('device_kind', env['backend'])}, "
        f"jax {jax.__version__}):\n{text}", flush=True)
  return 1 if failures or failed else 0


if __name__ == "__main__":
  sys.exit(main())
