"""conv2d's "winograd" formulation (the extension's Winograd F(4x4, 3x3) conv,
xnorjax/ops/winograd.py): forward against a float64 numpy loop, gradients against jax.grad of
lax.conv, both work layouts of the extension (per-thread and shared tile groups) over several
groups, the policy and the errors.

Tolerances: F(4x4, 3x3) rounds about 10x more than a direct float32 sum (its transforms multiply
by up to 8 and divide by 24); the largest errors seen here are about 1e-5 of the largest output,
and the tests allow 5e-5. A wrong transform coefficient, tile offset or channel block gives
errors of the order of the outputs themselves.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers.conv_reference import formulation_grads
from helpers.conv_reference import numpy_conv2d
from helpers.conv_reference import run_data_parallel_script
from xnorjax.ops import conv as conv_lib
from xnorjax.ops import conv2d
from xnorjax.ops import float_conv
from xnorjax.ops import winograd

pytestmark = pytest.mark.skipif(not winograd.available(),
                                reason="needs the C++ extension and a CPU with AVX-512F")

TOL = 5e-5


def assert_close(got, want):
  got, want = np.asarray(got), np.asarray(want)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=TOL, atol=TOL * float(np.abs(want).max()))


# (x shape, out channels, padding, pad_value). Covers: channel tails of the 16-channel transforms,
# the 8-row kernel-gradient blocks and the 32-channel product blocks (3, 9, 20 in; 4, 17, 40
# out), maps that are not multiples of the 4x4 tile (cropped tiles: 7x6, 9x11, 5x5), tile counts
# off the 12-tile panels, batch 1, asymmetric padding, padding beyond 2 (padded explicitly), +-1
# and 0.37 padding (padded explicitly), 2x2 maps (one tile larger than the map) and VALID convs
# down to a 1x1 output.
CASES = [
    ((2, 7, 6, 3), 4, "SAME", 0.0),
    ((1, 9, 11, 9), 17, "SAME", 0.0),
    ((3, 16, 16, 20), 40, "SAME", 0.0),
    ((2, 7, 6, 5), 33, ((2, 0), (0, 1)), 0.0),
    ((2, 5, 5, 16), 16, ((0, 2), (2, 1)), 0.0),
    ((2, 6, 6, 8), 16, 3, 0.0),
    ((2, 6, 5, 8), 16, "SAME", -1.0),
    ((2, 6, 5, 8), 16, "SAME", 0.37),
    ((2, 2, 2, 16), 32, "SAME", 0.0),
    ((2, 6, 5, 4), 8, "VALID", 0.0),
    ((3, 3, 3, 16), 16, "VALID", 0.0),
]


def _operands(rng, x_shape, out_channels):
  x = rng.standard_normal(x_shape).astype(np.float32)
  kernel = rng.standard_normal((3, 3, x_shape[3], out_channels)).astype(np.float32)
  return x, kernel


@pytest.mark.parametrize("case", CASES, ids=str)
def test_winograd_forward_matches_numpy(rng, case):
  x_shape, out_channels, padding, pad_value = case
  x, kernel = _operands(rng, x_shape, out_channels)
  got = jax.jit(lambda a, b: conv2d(a, b, padding=padding, pad_value=pad_value,
                                    formulation="winograd"))(x, kernel)
  assert got.dtype == jnp.float32
  assert_close(got, numpy_conv2d(x, kernel, (1, 1), padding, pad_value))


@pytest.mark.parametrize("case", CASES, ids=str)
def test_winograd_gradients_match_lax_autodiff(rng, case):
  """Input and kernel gradients against jax.grad of lax.conv."""
  x_shape, out_channels, padding, pad_value = case
  x, kernel = map(jnp.asarray, _operands(rng, x_shape, out_channels))
  out_shape = conv2d(x, kernel, padding=padding, formulation="lax").shape
  cotangent = jnp.asarray(rng.standard_normal(out_shape), jnp.float32)
  grads = formulation_grads(x, kernel, cotangent, ("lax", "winograd"), padding=padding,
                            pad_value=pad_value)
  for got, ref in zip(grads["winograd"], grads["lax"]):
    assert got.dtype == ref.dtype
    assert_close(got, ref)


def _numpy_kernel_grad(x, g, pads):
  """dk[i, j] = sum over pixels of xpad[n, h + i, w + j, c] g[n, h, w, o], in float64."""
  xp = np.pad(x.astype(np.float64), ((0, 0),) + pads + ((0, 0),))
  h, w = g.shape[1:3]
  return np.stack([np.einsum("nhwc,nhwo->co", xp[:, i:i + h, j:j + w], g)
                   for i in range(3) for j in range(3)]).reshape((3, 3) + x.shape[3:] + g.shape[3:])


@pytest.mark.parametrize("case", [
    # 64 -> 64: each thread takes its own groups of 24 tiles; 1,536 tiles; the kernel gradient in
    # three groups of 672 tiles, 128-tile chunks.
    ((24, 32, 32, 64), 64, 24),
    # 272 -> 272: a transformed kernel over 10 MiB, so groups shared by the threads, of 156 tiles:
    # 176 tiles of 4x4 maps, two groups; the kernel gradient as one group.
    ((176, 4, 4, 272), 272, 50),
], ids=["per_thread_groups", "shared_groups"])
def test_winograd_over_several_groups(rng, case):
  """Both work layouts of the extension across group boundaries, against float64 sums."""
  x_shape, out_channels, kernel_scale = case
  x = rng.standard_normal(x_shape).astype(np.float32)
  k = (rng.standard_normal((3, 3, x_shape[3], out_channels)) / kernel_scale).astype(np.float32)
  g = rng.standard_normal(x_shape[:3] + (out_channels,)).astype(np.float32)
  pads = ((1, 1), (1, 1))
  assert_close(jax.jit(lambda a, b: winograd.conv(a, b, pads))(x, k),
               numpy_conv2d(x, k, (1, 1), pads, 0.0))
  assert_close(jax.jit(lambda a, b: winograd.kernel_grad(a, b, pads))(x, g),
               _numpy_kernel_grad(x, g, pads))


def test_kernel_transform_round_trip(rng):
  """U = G k G^T and its transpose dk = G^T dU G, against the definitions."""
  k = rng.standard_normal((3, 3, 5, 7)).astype(np.float32)
  g = winograd.KERNEL_TRANSFORM.astype(np.float64)
  u = np.einsum("ai,ijco,bj->abco", g, k.astype(np.float64), g).reshape(36, 5, 7)
  np.testing.assert_allclose(np.asarray(winograd.transform_kernel(k)), u, rtol=1e-6, atol=1e-6)
  du = rng.standard_normal((36, 5, 7)).astype(np.float32)
  dk = np.einsum("ai,abco,bj->ijco", g, du.astype(np.float64).reshape(6, 6, 5, 7), g)
  np.testing.assert_allclose(np.asarray(winograd.kernel_grad_from_transformed(du)), dk, rtol=1e-6,
                             atol=1e-6)


def test_choose_formulation_takes_winograd_for_3x3_kernels():
  pads = lambda n, kh, kw: conv_lib.normalize_padding("SAME", (n, n), (kh, kw), (1, 1))
  choose = lambda shape, kernel_hw=(3, 3), **kw: conv_lib.choose_formulation(
      shape, kernel_hw + (shape[3], 64), (1, 1), pads(shape[1], *kernel_hw), backend="cpu", **kw)
  assert choose((16, 32, 32, 64), native=True) == "winograd"
  assert choose((16, 8, 8, 256), native=True, pad_value=-1.0) == "winograd"
  assert choose((16, 4, 4, 512), native=True) == "winograd"
  assert choose((16, 32, 32, 64), (2, 3), native=True) == "native"
  assert choose((16, 32, 32, 64), (5, 5), native=True) == "native"
  assert choose((16, 32, 32, 64), native=False) == "lax_padded"
  assert choose((16, 32, 32, 64), native=True, dtype=jnp.bfloat16) == "lax_padded"
  assert choose((16, 2, 2, 512), native=True) == "im2col"  # 2x2 maps: one tile, mostly padding
  assert choose((16, 32, 32, 3), native=True) == "native"  # RGB input: decided on whole steps


def test_auto_runs_winograd_on_the_cpu(rng):
  x = jnp.asarray(rng.standard_normal((2, 8, 8, 16)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((3, 3, 16, 32)), jnp.float32)
  hlo = jax.jit(jax.grad(lambda a, b: conv2d(a, b).sum(), (0, 1))).lower(x, k).as_text()
  assert "xnorjax_winograd_conv" in hlo and "xnorjax_winograd_kernel_grad" in hlo


def test_winograd_needs_a_3x3_kernel():
  """(The errors it shares with "native" are tested in tests/kernels/test_float_conv.py.)"""
  with pytest.raises(ValueError, match=r"needs a 3x3 kernel, got \(5, 5\)"):
    conv2d(jnp.ones((1, 6, 6, 4)), jnp.ones((5, 5, 4, 8)), formulation="winograd")
  with pytest.raises(ValueError, match=r"needs a 3x3 kernel, got \(5, 5\)"):  # not a reshape error
    winograd.conv(jnp.ones((1, 6, 6, 9)), jnp.ones((5, 5, 9, 8)), ((1, 1), (1, 1)))


def test_ffi_targets_reject_inconsistent_shapes():
  """The handlers check their operands: an error naming the operand, never a crash."""
  x = jnp.ones((2, 6, 6, 4), jnp.float32)
  pads = ((1, 1), (1, 1))
  call = lambda name, out, *args: jax.jit(lambda *a: jax.ffi.ffi_call(name, out)(
      *a, **float_conv.pad_attrs(pads)))(*args)
  y = jax.ShapeDtypeStruct((2, 6, 6, 8), jnp.float32)
  error = jax.errors.JaxRuntimeError
  with pytest.raises(error, match=r"u must be f32\[36, C, O\], got f32\[9, 4, 8\]"):
    call("xnorjax_winograd_conv", y, x, jnp.ones((9, 4, 8)))
  with pytest.raises(error, match="x has 4 channels, the kernel 5"):
    call("xnorjax_winograd_conv", y, x, jnp.ones((36, 5, 8)))
  with pytest.raises(error, match=r"the result must be f32\[2, 6, 6, 8\]"):
    call("xnorjax_winograd_conv", jax.ShapeDtypeStruct((2, 5, 6, 8), jnp.float32), x,
         jnp.ones((36, 4, 8)))
  du = jax.ShapeDtypeStruct((36, 4, 8), jnp.float32)
  with pytest.raises(error, match=r"g must be f32\[2, 6, 6, 8\], got f32\[2, 5, 6, 8\]"):
    call("xnorjax_winograd_kernel_grad", du, x, jnp.ones((2, 5, 6, 8)))
  with pytest.raises(ValueError, match=r"pads must lie in \[0, kernel - 1\]"):
    winograd.conv(x, jnp.ones((3, 3, 4, 8)), ((3, 1), (1, 1)))


def test_winograd_under_vmap(rng):
  """vmap folds the mapped axis into the conv's batch; per-example kernel gradients map."""
  x = jnp.asarray(rng.standard_normal((3, 2, 6, 6, 8)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((3, 3, 8, 16)), jnp.float32)
  assert_close(jax.vmap(lambda a: conv2d(a, k, formulation="winograd"))(x),
               jax.vmap(lambda a: conv2d(a, k, formulation="lax"))(x))
  per_example = lambda f: jax.vmap(jax.grad(lambda a, b: jnp.sum(conv2d(a, b, formulation=f) ** 2),
                                            argnums=1), (0, None))(x, k)
  assert_close(per_example("winograd"), per_example("lax"))


def test_winograd_stays_data_parallel_over_four_devices():
  """Each device convolves its shard of the batch and the kernel gradients are all-reduced."""
  run_data_parallel_script("winograd")
