"""xnor_conv / xnor_dense: exact against XLA on the same +-1 values, on every CPU dispatch path."""

import os
import subprocess
import sys
import textwrap
import threading

from hypothesis import given, settings, strategies as st
import jax
import jax.numpy as jnp
from jax import lax
import numpy as np
import pytest

import xnorjax
from xnorjax import _native
from xnorjax.ops import fold_batch_norm, pack_bits, xnor_conv, xnor_dense
from xnorjax.ops import conv as conv_lib
from xnorjax.ops import implementations
from xnorjax.ops.xnor import isa_code
from helpers.markers import requires_extension

pytestmark = requires_extension

KERNEL_ISAS = ("avx512", "avx2", "portable")  # the ISAS with a kernel of their own


def _supported(isa: str) -> bool:
  return xnorjax.extension_available() and xnorjax.require_extension().xnor.isa_supported(
      isa_code(isa))


ISAS = [pytest.param(i, marks=pytest.mark.skipif(not _supported(i), reason=f"CPU lacks {i}"))
        for i in KERNEL_ISAS]


def signs(rng, shape):
  """Random floats with exact zeros among them (sign(0) = +1)."""
  v = rng.standard_normal(shape).astype(np.float32)
  v.flat[:: max(1, v.size // 5)] = 0.0
  return v


def pm1(v):
  return np.where(v >= 0, 1, -1).astype(np.int32)


def lax_conv_reference(x, kernel, strides, pads, pad_value):
  """lax.conv_general_dilated in int32 on the +-1 values, padded explicitly with pad_value.

  Run on XLA's CPU backend: XLA's GPU backend has no int32 convolution (cuDNN takes only int8
  operands), and the reference must be the same program wherever the kernel under test runs.
  """
  with jax.default_device(jax.devices("cpu")[0]):
    xs = jnp.pad(pm1(x), ((0, 0), pads[0], pads[1], (0, 0)), constant_values=int(pad_value))
    return np.asarray(lax.conv_general_dilated(xs, pm1(kernel), strides, "VALID",
                                               dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                               preferred_element_type=jnp.int32))


def numpy_conv_reference(x, kernel, strides, pads, pad_value):
  """The same as a sum over taps of integer matmuls (independent of XLA)."""
  xs = np.pad(pm1(x), ((0, 0), pads[0], pads[1], (0, 0)), constant_values=int(pad_value))
  kh, kw, _, o = kernel.shape
  oh = (xs.shape[1] - kh) // strides[0] + 1
  ow = (xs.shape[2] - kw) // strides[1] + 1
  out = np.zeros((x.shape[0], oh, ow, o), np.int64)
  k = pm1(kernel).astype(np.int64)
  for i in range(kh):
    for j in range(kw):
      patch = xs[:, i:i + strides[0] * (oh - 1) + 1:strides[0], j:j + strides[1] * (ow - 1) + 1:strides[1]]
      out += patch.astype(np.int64) @ k[i, j]
  return out.astype(np.int32)


# (N, H, W, C, O, KH, KW, strides, padding): odd channel counts, 1x1 maps, batch 1 and > 1,
# every padding form, strides 1 and 2, kernels 1x1 to 7x7.
CONV_CASES = [
    (1, 1, 1, 1, 1, 1, 1, (1, 1), "VALID"),
    (2, 1, 1, 33, 5, 3, 3, (1, 1), "SAME"),
    (1, 5, 7, 3, 17, 3, 3, (1, 1), "SAME"),
    (3, 8, 8, 64, 64, 3, 3, (1, 1), "SAME"),
    (2, 9, 6, 70, 33, 3, 3, (2, 2), "SAME"),
    (1, 7, 7, 96, 130, 5, 5, (2, 1), "VALID"),
    (2, 6, 5, 31, 8, 2, 4, (1, 2), ((1, 0), (2, 3))),
    (1, 11, 10, 16, 20, 7, 7, (2, 2), "SAME"),
    (2, 4, 4, 129, 70, 1, 1, (2, 2), "VALID"),
    (1, 2, 2, 512, 48, 3, 3, (1, 1), "SAME"),
    (5, 3, 3, 65, 100, 3, 3, (1, 1), ((2, 2), (0, 1))),
]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_conv_matches_lax_exactly(rng, isa, case):
  n, h, w, c, o, kh, kw, strides, padding = case
  x = signs(rng, (n, h, w, c))
  kernel = signs(rng, (kh, kw, c, o))
  pads = conv_lib.normalize_padding(padding, (h, w), (kh, kw), strides)
  for pad_value in (0.0, -1.0, 1.0):
    fn = jax.jit(lambda a, b: xnor_conv(a, b, strides=strides, padding=padding,
                                        pad_value=pad_value, isa=isa, implementation="kernel"))
    got = np.asarray(fn(x, kernel))
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, lax_conv_reference(x, kernel, strides, pads, pad_value))


def _conv_into(isa, xp, w, scale, bias, out, output, c, strides, pads, pad_value, threads,
               input_major):
  xnorjax.require_extension().xnor.conv_into(
      xp, w, scale, bias, out, output, c, strides[0], strides[1], pads[0][0], pads[0][1],
      pads[1][0], pads[1][1], int(pad_value), isa_code(isa), threads, input_major)


def _packed_operands(x, kernel, input_major):
  """Packed x, and the packed kernel as [KH, KW, Cw, O] (input-major) or [O, KH, KW, Cw]."""
  xp = np.asarray(pack_bits(x))
  wp = np.asarray(pack_bits(kernel, axis=-2))
  return xp, wp if input_major else np.ascontiguousarray(wp.transpose(3, 0, 1, 2))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("threads,input_major", [(1, True), (3, True), (2, False)])
def test_poisoned_outputs_are_all_written(rng, isa, threads, input_major):
  # The engine runs on caller buffers filled with a sentinel: every element must be overwritten.
  for n, h, w, c, o, kh, kw, strides, padding in CONV_CASES:
    x, kernel = signs(rng, (n, h, w, c)), signs(rng, (kh, kw, c, o))
    pads = conv_lib.normalize_padding(padding, (h, w), (kh, kw), strides)
    pad_value = int(rng.integers(-1, 2))
    want = numpy_conv_reference(x, kernel, strides, pads, pad_value)
    xp, wt = _packed_operands(x, kernel, input_major)
    scale = rng.uniform(0.5, 2.0, o).astype(np.float32)
    bias = rng.uniform(-3, 3, o).astype(np.float32)
    out = np.full(want.shape, np.iinfo(np.int32).min, np.int32)
    _conv_into(isa, xp, wt, scale, bias, out, "int32", c, strides, pads, pad_value, threads,
               input_major)
    np.testing.assert_array_equal(out, want)
    out_f = np.full(want.shape, np.nan, np.float32)
    _conv_into(isa, xp, wt, scale, bias, out_f, "float32", c, strides, pads, pad_value, threads,
               input_major)
    np.testing.assert_allclose(out_f, want * scale + bias, rtol=1e-6, atol=1e-5)
    out_p = np.full(want.shape[:3] + (-(-o // 32),), 0xDEADBEEF, np.uint32)
    _conv_into(isa, xp, wt, scale, bias, out_p, "packed", c, strides, pads, pad_value, threads,
               input_major)
    np.testing.assert_array_equal(out_p, np.asarray(pack_bits(out_f)))


def test_every_isa_gives_identical_results(rng):
  # Integers, floats (one fused multiply-add rounding on every path) and packed bits, bit for bit.
  isas = [i for i in KERNEL_ISAS if _supported(i)]
  x, kernel = signs(rng, (2, 7, 6, 75)), signs(rng, (3, 3, 75, 45))
  pads = ((1, 1), (1, 1))
  xp, wp = _packed_operands(x, kernel, True)
  scale = rng.standard_normal(45).astype(np.float32)
  bias = (rng.standard_normal(45) * 30).astype(np.float32)
  for output, dtype, width in (("int32", np.int32, 45), ("float32", np.float32, 45),
                               ("packed", np.uint32, 2)):
    results = []
    for isa in isas:
      out = np.zeros((2, 7, 6, width), dtype)
      _conv_into(isa, xp, wp, scale, bias, out, output, 75, (1, 1), pads, 0, 2, True)
      results.append(out)
    for isa, out in zip(isas[1:], results[1:]):
      np.testing.assert_array_equal(out.view(np.uint32), results[0].view(np.uint32),
                                    err_msg=f"{output}: {isa} vs {isas[0]}")


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 3), h=st.integers(1, 9), w=st.integers(1, 9), c=st.integers(1, 100),
       o=st.integers(1, 80), kh=st.integers(1, 7), kw=st.integers(1, 7),
       sh=st.integers(1, 2), sw=st.integers(1, 2), pad_value=st.sampled_from([-1, 0, 1]),
       pad_mode=st.sampled_from(["SAME", "VALID", "explicit"]), seed=st.integers(0, 2**32 - 1),
       threads=st.integers(1, 3))
def test_shape_fuzz_every_isa(n, h, w, c, o, kh, kw, sh, sw, pad_value, pad_mode, seed, threads):
  rng = np.random.default_rng(seed)
  if pad_mode == "explicit":
    padding = tuple((int(rng.integers(0, k)), int(rng.integers(0, k))) for k in (kh, kw))
  else:
    padding = pad_mode
  pads = conv_lib.normalize_padding(padding, (h, w), (kh, kw), (sh, sw))
  if h + sum(pads[0]) < kh or w + sum(pads[1]) < kw:
    return  # no output: the op rejects this shape (tested in test_bad_input)
  x, kernel = signs(rng, (n, h, w, c)), signs(rng, (kh, kw, c, o))
  want = numpy_conv_reference(x, kernel, (sh, sw), pads, pad_value)
  ones, zeros = np.ones(o, np.float32), np.zeros(o, np.float32)
  for input_major in (True, False):
    xp, w = _packed_operands(x, kernel, input_major)
    for isa in KERNEL_ISAS:
      if not _supported(isa):
        continue
      out = np.full(want.shape, np.iinfo(np.int32).max, np.int32)
      _conv_into(isa, xp, w, ones, zeros, out, "int32", c, (sh, sw), pads, pad_value, threads,
                 input_major)
      np.testing.assert_array_equal(out, want, err_msg=f"isa={isa} input_major={input_major}")


def test_auto_uses_the_kernel_and_matches_reference(rng):
  x, kernel = signs(rng, (2, 6, 6, 40)), signs(rng, (3, 3, 40, 24))
  fn = jax.jit(lambda a, b: xnor_conv(a, b))
  assert "xnorjax_xnor_conv_i32" in fn.lower(x, kernel).as_text()
  np.testing.assert_array_equal(np.asarray(fn(x, kernel)),
                                np.asarray(xnor_conv(x, kernel, implementation="reference")))


def test_packed_inputs_match_float_inputs(rng):
  x, kernel = signs(rng, (2, 5, 5, 45)), signs(rng, (3, 3, 45, 10))
  want = np.asarray(xnor_conv(x, kernel, padding="VALID"))
  xp, wp = pack_bits(x), pack_bits(kernel, axis=-2)
  np.testing.assert_array_equal(np.asarray(xnor_conv(xp, wp, padding="VALID", channels=45)), want)
  np.testing.assert_array_equal(np.asarray(xnor_conv(xp, kernel, padding="VALID")), want)
  np.testing.assert_array_equal(np.asarray(xnor_conv(x, wp, padding="VALID")), want)
  bools = jnp.asarray(x >= 0)
  np.testing.assert_array_equal(np.asarray(xnor_conv(bools, kernel, padding="VALID")), want)


def test_nonzero_tail_bits_are_ignored(rng):
  # Packed arrays from elsewhere may carry garbage past the last channel: the kernel masks it.
  x, kernel = signs(rng, (1, 4, 4, 40)), signs(rng, (3, 3, 40, 8))
  xp = np.array(pack_bits(x))
  xp[..., -1] |= np.uint32(0xFFFFFF00)  # channels 40..63 do not exist
  wp = np.array(pack_bits(kernel, axis=-2))
  wp[:, :, -1, :] |= np.uint32(0xF0F0F000)
  want = np.asarray(xnor_conv(x, kernel))
  for isa in ("auto", "portable"):
    got = xnor_conv(xp, wp, channels=40, isa=isa, implementation="kernel")
    np.testing.assert_array_equal(np.asarray(got), want)


@pytest.mark.parametrize("isa", ISAS)
def test_fused_epilogue(rng, isa):
  x, kernel = signs(rng, (2, 6, 5, 50)), signs(rng, (3, 3, 50, 40))
  scale = rng.uniform(0.1, 2.0, 40).astype(np.float32)
  bias = rng.uniform(-20, 20, 40).astype(np.float32)
  dot = np.asarray(xnor_conv(x, kernel, isa=isa, implementation="kernel")).astype(np.float64)
  y = jax.jit(lambda a, b: xnor_conv(a, b, scale=scale, bias=bias, isa=isa,
                                     implementation="kernel"))(x, kernel)
  assert y.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(y), dot * scale + bias, rtol=1e-6, atol=1e-5)
  packed = xnor_conv(x, kernel, scale=scale, bias=bias, pack_output=True, isa=isa,
                     implementation="kernel")
  assert packed.dtype == jnp.uint32 and packed.shape == (2, 6, 5, 2)
  np.testing.assert_array_equal(np.asarray(packed), np.asarray(pack_bits(y)))
  ref = xnor_conv(x, kernel, scale=scale, bias=bias, implementation="reference")
  np.testing.assert_allclose(np.asarray(ref), np.asarray(y), rtol=1e-6, atol=1e-5)
  # Sign of dot alone (no scale / bias): bit set where dot >= 0.
  np.testing.assert_array_equal(
      np.asarray(xnor_conv(x, kernel, pack_output=True, isa=isa, implementation="kernel")),
      np.asarray(pack_bits(dot.astype(np.float32))))


def test_fold_batch_norm(rng):
  dot = rng.integers(-50, 50, (4, 6)).astype(np.float32)
  alpha, mean = rng.uniform(0.5, 2, 6), rng.standard_normal(6)
  var, gamma, beta = rng.uniform(0.5, 2, 6), rng.standard_normal(6), rng.standard_normal(6)
  scale, bias = fold_batch_norm(alpha, None, mean, var, gamma, beta, epsilon=1e-3)
  want = (dot * alpha - mean) / np.sqrt(var + 1e-3) * gamma + beta
  np.testing.assert_allclose(np.asarray(dot * scale + bias), want, rtol=1e-5, atol=1e-5)


DENSE_CASES = [(1, 1, 1), (3, 31, 5), (4, 32, 16), (7, 33, 40), (2, 100, 130), (16, 1000, 10)]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("m,k,n", DENSE_CASES)
def test_dense_matches_matmul_exactly(rng, isa, m, k, n):
  x, kernel = signs(rng, (m, k)), signs(rng, (k, n))
  got = jax.jit(lambda a, b: xnor_dense(a, b, isa=isa, implementation="kernel"))(x, kernel)
  assert got.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(got), pm1(x) @ pm1(kernel))
  scale, bias = rng.uniform(0.5, 2, n).astype(np.float32), rng.uniform(-5, 5, n).astype(np.float32)
  y = xnor_dense(x, kernel, scale=scale, bias=bias, isa=isa, implementation="kernel")
  np.testing.assert_allclose(np.asarray(y), (pm1(x) @ pm1(kernel)) * scale + bias, rtol=1e-6,
                             atol=1e-5)
  packed = xnor_dense(x, kernel, scale=scale, bias=bias, pack_output=True, isa=isa,
                      implementation="kernel")
  np.testing.assert_array_equal(np.asarray(packed), np.asarray(pack_bits(y)))


def test_dense_leading_axes_and_packed_inputs(rng):
  x, kernel = signs(rng, (2, 3, 70)), signs(rng, (70, 9))
  want = np.einsum("abk,kn->abn", pm1(x), pm1(kernel))
  np.testing.assert_array_equal(np.asarray(xnor_dense(x, kernel)), want)
  got = xnor_dense(pack_bits(x), pack_bits(kernel, axis=-2), features=70)
  np.testing.assert_array_equal(np.asarray(got), want)
  np.testing.assert_array_equal(np.asarray(xnor_dense(x, kernel, implementation="reference")), want)


def test_vmap(rng):
  x, kernel = signs(rng, (3, 2, 5, 5, 20)), signs(rng, (3, 3, 20, 7))
  kernels = signs(rng, (3, 3, 3, 20, 7))
  batched = jax.jit(jax.vmap(lambda a: xnor_conv(a, kernel, strides=2)))(x)
  np.testing.assert_array_equal(
      np.asarray(batched), np.stack([np.asarray(xnor_conv(a, kernel, strides=2)) for a in x]))
  both = jax.vmap(lambda a, b: xnor_conv(a, b, pad_value=1.0))(x, kernels)
  np.testing.assert_array_equal(
      np.asarray(both),
      np.stack([np.asarray(xnor_conv(a, b, pad_value=1.0)) for a, b in zip(x, kernels)]))
  xd, kd = signs(rng, (4, 6, 33)), signs(rng, (33, 5))
  np.testing.assert_array_equal(np.asarray(jax.vmap(lambda a: xnor_dense(a, kd))(xd)),
                                np.einsum("abk,kn->abn", pm1(xd), pm1(kd)))


def test_missing_extension_falls_back_to_reference(rng, monkeypatch):
  from xnorjax import _native  # pylint: disable=g-import-not-at-top
  x, kernel = signs(rng, (1, 4, 4, 10)), signs(rng, (3, 3, 10, 3))
  want = np.asarray(xnor_conv(x, kernel))
  monkeypatch.setattr(_native, "_load", lambda: (None, _native.BUILD_HINT))
  np.testing.assert_array_equal(np.asarray(xnor_conv(x, kernel)), want)
  with pytest.raises(xnorjax.ExtensionNotBuiltError, match="make install"):
    xnor_conv(x, kernel, implementation="kernel")


def test_bad_input(rng):
  x, kernel = signs(rng, (1, 4, 4, 40)), signs(rng, (3, 3, 40, 8))
  xp, wp = pack_bits(x), pack_bits(kernel, axis=-2)
  cases = [
      (TypeError, "x must be a float or bool", lambda: xnor_conv(x.astype(np.int32), kernel)),
      (TypeError, "kernel must be a float", lambda: xnor_conv(x, kernel.astype(np.int8))),
      (ValueError, "x must have rank 4", lambda: xnor_conv(x[0], kernel)),
      (ValueError, "kernel must have rank 4", lambda: xnor_conv(x, kernel[0])),
      (ValueError, "channels mismatch", lambda: xnor_conv(x, kernel[:, :, :39])),
      (ValueError, "channels is required", lambda: xnor_conv(xp, wp)),
      (ValueError, "channels=70 needs 3", lambda: xnor_conv(xp, wp, channels=70)),
      (ValueError, "channels mismatch", lambda: xnor_conv(xp, kernel, channels=39)),
      (ValueError, "channels must be a positive int", lambda: xnor_conv(xp, wp, channels=0)),
      (ValueError, "channels must be a positive int", lambda: xnor_conv(xp, wp, channels=-5)),
      (ValueError, "zero-size axis", lambda: xnor_conv(x[:0], kernel)),
      (ValueError, "zero-size axis", lambda: xnor_conv(x, kernel[..., :0])),
      (ValueError, "strides must be", lambda: xnor_conv(x, kernel, strides=0)),
      (ValueError, "strides must be", lambda: xnor_conv(x, kernel, strides=(1, -1))),
      (ValueError, "padding must be", lambda: xnor_conv(x, kernel, padding=-1)),
      (ValueError, "padding must be", lambda: xnor_conv(x, kernel, padding="FULL")),
      (ValueError, "smaller than the kernel", lambda: xnor_conv(x[:, :2], kernel, padding="VALID")),
      (ValueError, "pad_value must be 0, -1 or \\+1", lambda: xnor_conv(x, kernel, pad_value=0.5)),
      (ValueError, "isa must be one of", lambda: xnor_conv(x, kernel, isa="sse")),
      (ValueError, "implementation must be", lambda: xnor_conv(x, kernel, implementation="c")),
      (ValueError, "scale must be a scalar or have shape", lambda: xnor_conv(x, kernel,
                                                                          scale=np.ones(7))),
      (TypeError, "pack_output must be a bool", lambda: xnor_conv(x, kernel, pack_output=1)),
      (ValueError, "kernel must have rank 2", lambda: xnor_dense(x, kernel)),
      (ValueError, "features mismatch", lambda: xnor_dense(x[0, 0], kernel[0, 0, :30])),
      (ValueError, "features=70 needs 3", lambda: xnor_dense(xp[0, 0], wp[0, 0], features=70)),
      (ValueError, "features is required", lambda: xnor_dense(xp[0, 0], wp[0, 0])),
  ]
  for error, match, fn in cases:
    with pytest.raises(error, match=match):
      fn()


def test_kernel_rejects_inconsistent_calls_without_crashing(rng):
  # Direct FFI calls that bypass the wrapper's checks: the handler returns an error, never reads
  # or writes out of bounds.
  xp = pack_bits(signs(rng, (1, 4, 4, 40)))
  wt = jnp.transpose(pack_bits(signs(rng, (3, 3, 40, 8)), axis=-2), (3, 0, 1, 2))
  attrs = dict(channels=np.int64(40), stride_h=np.int64(1), stride_w=np.int64(1),
               pad_top=np.int64(1), pad_bottom=np.int64(1), pad_left=np.int64(1),
               pad_right=np.int64(1), pad_value=np.int64(0), impl=np.int64(0))
  good = jax.ShapeDtypeStruct((1, 4, 4, 8), jnp.int32)
  call = lambda out, **kw: jax.ffi.ffi_call("xnorjax_xnor_conv_i32", out)(xp, wt, **{**attrs, **kw})
  np.testing.assert_array_equal(np.asarray(call(good)), np.asarray(xnor_conv(
      unpack(xp, 40), unpack_kernel(wt, 40))))
  for out, kw, match in [
      (good, dict(channels=np.int64(70)), "needs 3 packed words"),
      (good, dict(channels=np.int64(0)), "channels must be >= 1"),
      (good, dict(stride_h=np.int64(0)), "stride_h must be >= 1"),
      (good, dict(pad_top=np.int64(-3)), "pad_top must be >= 0"),
      (good, dict(pad_value=np.int64(2)), "pad_value must be"),
      (good, dict(impl=np.int64(9)), "impl=9"),
      (jax.ShapeDtypeStruct((1, 4, 5, 8), jnp.int32), {}, "result must have shape"),
      (good, dict(pad_top=np.int64(0), pad_bottom=np.int64(0)), "result must have shape"),
  ]:
    with pytest.raises(Exception, match=match):
      jax.block_until_ready(call(out, **kw))
  # The CPU-only target with the weights as packed (input-major) checks them the same way.
  wp = jnp.transpose(wt, (1, 2, 3, 0))
  hwio = lambda w, out, **kw: jax.ffi.ffi_call("xnorjax_xnor_conv_i32_hwio", out)(
      xp, w, **{**attrs, **kw})
  np.testing.assert_array_equal(np.asarray(hwio(wp, good)), np.asarray(call(good)))
  for w, out, kw, match in [
      (wp[..., :1, :], good, {}, "w has 1"),
      (wt, good, {}, "w has 3"),  # output-major weights given to the input-major target
      (wp[None], good, {}, "w must be u32\\[KH, KW, Cw, O\\]"),
      (wp, good, dict(channels=np.int64(65)), "needs 3 packed words"),
  ]:
    with pytest.raises(Exception, match=match):
      jax.block_until_ready(hwio(w, out, **kw))
  with pytest.raises(ValueError, match="channels"):
    xnorjax.require_extension().xnor.conv_into(
        np.asarray(xp), np.asarray(wt), np.ones(8, np.float32), np.zeros(8, np.float32),
        np.zeros((1, 4, 4, 8), np.int32), "int32", 100, 1, 1, 1, 1, 1, 1, 0, 0, 1)


@pytest.mark.parametrize("isa", ["auto", "portable"])
def test_contract_targets_match_the_cpu_layout_targets(rng, isa):
  # The FFI contract's targets (weights output-major, shared with CUDA) and the CPU-only ones the
  # wrapper calls (weights as packed, input-major) compute the same, for every output form.
  c, o = 45, 37
  xp = pack_bits(signs(rng, (2, 5, 4, c)))
  wp = pack_bits(signs(rng, (3, 2, c, o)), axis=-2)
  scale = jnp.asarray(rng.uniform(0.5, 2, o), jnp.float32)
  bias = jnp.asarray(rng.uniform(-9, 9, o), jnp.float32)
  attrs = dict(channels=np.int64(c), stride_h=np.int64(2), stride_w=np.int64(1),
               pad_top=np.int64(1), pad_bottom=np.int64(1), pad_left=np.int64(0),
               pad_right=np.int64(1), pad_value=np.int64(0), impl=np.int64(isa_code(isa)))
  shapes = {"i32": ((2, 3, 4, o), jnp.int32), "f32": ((2, 3, 4, o), jnp.float32),
            "packed": ((2, 3, 4, 2), jnp.uint32)}
  for kind, (shape, dtype) in shapes.items():
    extra = () if kind == "i32" else (scale, bias)
    out = jax.ShapeDtypeStruct(shape, dtype)
    contract = jax.ffi.ffi_call(f"xnorjax_xnor_conv_{kind}", out)(
        xp, jnp.transpose(wp, (3, 0, 1, 2)), *extra, **attrs)
    cpu = jax.ffi.ffi_call(f"xnorjax_xnor_conv_{kind}_hwio", out)(xp, wp, *extra, **attrs)
    np.testing.assert_array_equal(np.asarray(contract), np.asarray(cpu), err_msg=kind)
  want = xnor_conv(xp, wp, channels=c, strides=(2, 1), padding=((1, 1), (0, 1)),
                   implementation="reference")
  i32 = jax.ffi.ffi_call("xnorjax_xnor_conv_i32", jax.ShapeDtypeStruct((2, 3, 4, o), jnp.int32))(
      xp, jnp.transpose(wp, (3, 0, 1, 2)), **attrs)
  np.testing.assert_array_equal(np.asarray(i32), np.asarray(want))
  xd, wd = pack_bits(signs(rng, (6, 70))), pack_bits(signs(rng, (70, o)), axis=-2)
  for kind, (dtype, width) in {"i32": (jnp.int32, o), "f32": (jnp.float32, o),
                               "packed": (jnp.uint32, 2)}.items():
    extra = () if kind == "i32" else (scale, bias)
    out = jax.ShapeDtypeStruct((6, width), dtype)
    kw = dict(features=np.int64(70), impl=np.int64(isa_code(isa)))
    contract = jax.ffi.ffi_call(f"xnorjax_xnor_dense_{kind}", out)(xd, wd.T, *extra, **kw)
    cpu = jax.ffi.ffi_call(f"xnorjax_xnor_dense_{kind}_kn", out)(xd, wd, *extra, **kw)
    np.testing.assert_array_equal(np.asarray(contract), np.asarray(cpu), err_msg=kind)
    if kind == "i32":
      np.testing.assert_array_equal(
          np.asarray(contract), np.asarray(xnor_dense(xd, wd, features=70, implementation="reference")))


def unpack(xp, c):
  return xnorjax.ops.unpack_bits(xp, c, axis=-1)


def unpack_kernel(wt, c):
  return jnp.transpose(xnorjax.ops.unpack_bits(wt, c, axis=-1), (1, 2, 3, 0))


def test_isa_names_map_to_the_extension_codes():
  """The Python ISA names are exactly the extension's, and each op passes the extension's code."""
  codes = xnorjax.require_extension().xnor.ISA_CODES
  assert tuple(codes) == implementations.ISAS
  assert len(set(codes.values())) == len(codes)
  for isa in implementations.ISAS:
    assert isa_code(isa) == codes[isa]
  x, kernel = np.ones((1, 3, 3, 8), np.float32), np.ones((3, 3, 8, 2), np.float32)
  lowered = jax.jit(lambda a, b: xnor_conv(a, b, isa="portable", implementation="kernel")).lower(
      x, kernel).as_text()
  assert f"impl = {codes['portable']} : i64" in lowered


def test_cpu_features_reported():
  xnor = xnorjax.require_extension().xnor
  features = xnor.cpu_features()
  assert set(features) == {"avx512_vpopcntdq", "avx2", "avx512f"}
  want = "avx512" if features["avx512_vpopcntdq"] else "avx2" if features["avx2"] else "portable"
  assert xnor.auto_isa() == xnor.ISA_CODES[want]
  # AVX-512F (the float32 training convs) comes with any AVX-512 extension.
  assert features["avx512f"] or not features["avx512_vpopcntdq"]


SHARDING_SCRIPT = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from xnorjax.ops import pack_bits, xnor_conv, xnor_dense
    assert jax.device_count() == 4
    mesh = jax.make_mesh((4,), ("b",))
    rng = np.random.default_rng(int(os.environ["SEED"]))
    x = rng.standard_normal((8, 6, 5, 40)).astype(np.float32)
    k = rng.standard_normal((3, 3, 40, 20)).astype(np.float32)
    scale = rng.uniform(0.5, 2, 20).astype(np.float32)
    cases = {
        "conv": (lambda a: xnor_conv(a, k, strides=(2, 1)), x),
        "conv_packed_in": (lambda a: xnor_conv(a, k, channels=40), np.asarray(pack_bits(x))),
        "conv_fused": (lambda a: xnor_conv(a, k, scale=scale, pack_output=True), x),
        "dense": (lambda a: xnor_dense(a, k[0, 0]), x.reshape(8, 30, 40)),
    }
    for name, (fn, arg) in cases.items():
      want = np.asarray(jax.jit(fn)(arg))
      sharded = jax.device_put(arg, NamedSharding(mesh, P("b")))
      compiled = jax.jit(fn).lower(sharded).compile()
      got = compiled(sharded)
      np.testing.assert_array_equal(np.asarray(got), want, err_msg=name)
      assert got.sharding.spec[0] == "b", (name, got.sharding)
      hlo = compiled.as_text()
      assert "all-gather" not in hlo, name
      calls = [l for l in hlo.splitlines() if "custom_call_target=\\"xnorjax_xnor_" in l]
      assert len(calls) == 1, (name, calls)
      # Each device runs the kernel on its quarter of the batch.
      rows = 2 if name != "dense" else 60
      assert f"[{rows}," in calls[0].split("custom-call")[0], (name, calls[0][:200])
    print("OK")
""")


def test_sharded_over_four_devices_partitions_the_batch(rng):
  env = dict(os.environ, SEED=str(int(rng.integers(2**31))))
  result = subprocess.run([sys.executable, "-c", SHARDING_SCRIPT], capture_output=True, text=True,
                          env=env, timeout=300, check=False)
  assert result.returncode == 0 and "OK" in result.stdout, result.stdout + result.stderr


def test_concurrent_calls_from_several_threads_are_exact(rng):
  """Calls from several threads at once (one holds the kernels' spinning worker pool, the others
  fall back to XLA's pool) all finish with exact results."""
  x = signs(rng, (4, 8, 8, 64))
  kernel = signs(rng, (3, 3, 64, 96))
  want = lax_conv_reference(x, kernel, (1, 1), ((1, 1), (1, 1)), 0.0)
  fn = jax.jit(lambda a, b: xnor_conv(a, b, implementation="kernel"))
  xs, ks = jnp.asarray(x), jnp.asarray(kernel)
  fn(xs, ks).block_until_ready()
  wrong = []

  def work():
    for _ in range(25):
      if not np.array_equal(np.asarray(fn(xs, ks)), want):
        wrong.append(threading.get_ident())

  threads = [threading.Thread(target=work) for _ in range(4)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(timeout=120)
  assert not any(t.is_alive() for t in threads), "a concurrent call hung"
  assert not wrong


@pytest.mark.skipif(not _native.cuda_kernels_available(), reason="CUDA kernels not built")
def test_cuda_lowering_calls_the_input_major_targets(rng):
  """On a GPU the wrapper calls the "_hwio" / "_kn" CUDA targets: no weight transpose per call
  (checked on the lowered program; running it needs a GPU)."""
  x = signs(rng, (2, 6, 6, 40))
  kernel = pack_bits(signs(rng, (3, 3, 40, 24)), axis=-2)
  dense_kernel = pack_bits(signs(rng, (40, 24)), axis=-2)
  for fn, target in ((lambda a, w: xnor_conv(a, w, channels=40), "xnorjax_xnor_conv_i32_hwio"),
                     (lambda a, w: xnor_dense(a.reshape(-1, 40), w, features=40),
                      "xnorjax_xnor_dense_i32_kn")):
    w = kernel if "conv" in target else dense_kernel
    text = jax.jit(fn).trace(jnp.asarray(x), w).lower(lowering_platforms=("cuda",)).as_text()
    assert f'custom_call @{target}(' in text or f'"{target}"' in text, text[-2000:]
    assert "transpose" not in text
