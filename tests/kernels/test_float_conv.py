"""conv2d's "native" formulation (the extension's float32 conv, xnorjax/ops/float_conv.py):
forward against a float64 numpy loop, gradients against jax.grad of lax.conv, its policy and
its errors; the empty batch and the errors it shares with "winograd" (tests/kernels/test_winograd.py)
for both."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import xnorjax
from helpers.conv_reference import formulation_grads
from helpers.conv_reference import numpy_conv2d
from helpers.conv_reference import run_data_parallel_script
from xnorjax.ops import conv as conv_lib
from xnorjax.ops import conv2d
from xnorjax.ops import float_conv

pytestmark = pytest.mark.skipif(not float_conv.available(),
                                reason="needs the C++ extension and a CPU with AVX-512F")

# (x shape, kernel hw, out channels, padding, pad_value). Covers: channel tails of the 8-row
# kernel-gradient blocks and of the 32-channel output blocks (3, 9, 20 in; 4, 17, 40 out), pixel
# counts that are not multiples of the 12-pixel conv blocks or the 128-pixel gradient chunks,
# batch 1, asymmetric padding, padding beyond kernel - 1 (padded explicitly), +-1 and 0.37
# padding (padded explicitly), 1x1 and 2x3 kernels, and maps smaller than the kernel.
CASES = [
    ((2, 7, 6, 3), (3, 3), 4, "SAME", 0.0),
    ((1, 9, 11, 9), (3, 3), 17, "SAME", 0.0),
    ((3, 16, 16, 20), (3, 3), 40, "SAME", 0.0),
    ((2, 7, 6, 5), (2, 3), 33, ((2, 0), (0, 1)), 0.0),
    ((2, 6, 6, 8), (3, 3), 16, 3, 0.0),
    ((2, 6, 5, 8), (3, 3), 16, "SAME", -1.0),
    ((2, 6, 5, 8), (3, 3), 16, "SAME", 0.37),
    ((2, 5, 4, 12), (1, 1), 24, "VALID", 0.0),
    ((2, 2, 2, 16), (3, 3), 32, "SAME", 0.0),
    ((2, 6, 5, 4), (3, 3), 8, "VALID", 0.0),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_native_forward_matches_numpy(rng, case):
  x_shape, kernel_hw, out_channels, padding, pad_value = case
  x = rng.standard_normal(x_shape).astype(np.float32)
  kernel = rng.standard_normal(kernel_hw + (x_shape[3], out_channels)).astype(np.float32)
  got = jax.jit(lambda a, b: conv2d(a, b, padding=padding, pad_value=pad_value,
                                    formulation="native"))(x, kernel)
  expected = numpy_conv2d(x, kernel, (1, 1), padding, pad_value)
  assert got.shape == expected.shape and got.dtype == jnp.float32
  # float32 sums of up to 180 products, against float64
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5,
                             atol=1e-5 * float(np.abs(expected).max()))


@pytest.mark.parametrize("case", CASES, ids=str)
def test_native_gradients_match_lax_autodiff(rng, case):
  """Input and kernel gradients against jax.grad of lax.conv (float32, other summation order)."""
  x_shape, kernel_hw, out_channels, padding, pad_value = case
  x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal(kernel_hw + (x_shape[3], out_channels)), jnp.float32)
  out_shape = conv2d(x, kernel, padding=padding, formulation="lax").shape
  cotangent = jnp.asarray(rng.standard_normal(out_shape), jnp.float32)
  grads = formulation_grads(x, kernel, cotangent, ("lax", "native"), padding=padding,
                            pad_value=pad_value)
  for got, ref in zip(grads["native"], grads["lax"]):
    assert got.shape == ref.shape and got.dtype == ref.dtype
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5,
                               atol=1e-5 * float(np.abs(ref).max()))


def test_native_kernel_gradient_of_a_large_batch(rng):
  """Many 128-pixel chunks and every block of a 64->64 layer (float32 sums of 4,096 terms)."""
  x = rng.standard_normal((16, 16, 16, 64)).astype(np.float32)
  g = rng.standard_normal((16, 16, 16, 64)).astype(np.float32)
  pads = ((1, 1), (1, 1))
  got = np.asarray(jax.jit(lambda a, b: float_conv.kernel_grad(a, b, (3, 3), pads))(x, g))
  xp = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
  want = np.stack([np.einsum("nhwc,nhwo->co", xp[:, i:i + 16, j:j + 16], g)
                   for i in range(3) for j in range(3)]).reshape(3, 3, 64, 64)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))


@pytest.mark.parametrize("formulation", ["native", "winograd"])
def test_extension_formulations_with_an_empty_batch(formulation):
  x, k = jnp.zeros((0, 8, 8, 16)), jnp.ones((3, 3, 16, 32))
  assert conv2d(x, k, formulation=formulation).shape == (0, 8, 8, 32)
  grads = jax.grad(lambda a, b: conv2d(a, b, formulation=formulation).sum(), (0, 1))(x, k)
  assert grads[0].shape == x.shape
  np.testing.assert_array_equal(np.asarray(grads[1]), np.zeros(k.shape))


def test_choose_formulation_takes_native_where_it_runs():
  """Stride-1 float32 convs on the CPU, but 3x3 kernels (Winograd: tests/kernels/test_winograd.py)."""
  same = lambda n: conv_lib.normalize_padding("SAME", (n, n), (5, 5), (1, 1))
  choose = lambda shape, **kw: conv_lib.choose_formulation(
      shape, (5, 5, shape[3], 64), (1, 1), same(shape[1]), backend="cpu", **kw)
  assert choose((16, 32, 32, 64), native=True) == "native"
  assert choose((16, 8, 8, 256), native=True, pad_value=-1.0) == "native"
  assert choose((16, 32, 32, 64), native=False) == "lax_padded"
  assert choose((16, 32, 32, 64), native=True, dtype=jnp.bfloat16) == "lax_padded"
  assert choose((16, 4, 4, 512), native=True) == "native"
  assert choose((16, 4, 4, 512), native=False) == "im2col"
  assert choose((16, 2, 2, 512), native=True) == "im2col"  # 2x2 maps: no faster
  assert choose((128, 2, 2, 512), native=True) == "unrolled"  # ... from batch 64 on
  assert choose((16, 32, 32, 3), native=True) == "native"  # RGB input: decided on whole steps
  assert conv_lib.choose_formulation((16, 32, 32, 64), (5, 5, 64, 0), (1, 1), same(32),
                                     backend="cpu", native=True) == "lax_padded"
  assert conv_lib.choose_formulation((16, 32, 32, 64), (5, 5, 64, 64), (2, 2), same(32),
                                     backend="cpu", native=True) == "lax_im2col"


def test_auto_runs_native_on_the_cpu(rng):
  x = jnp.asarray(rng.standard_normal((2, 8, 8, 16)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((2, 3, 16, 32)), jnp.float32)
  hlo = jax.jit(lambda a, b: conv2d(a, b)).lower(x, k).as_text()
  assert "xnorjax_float_conv" in hlo
  bf16 = lambda a, b: conv2d(a.astype(jnp.bfloat16), b.astype(jnp.bfloat16),
                             preferred_element_type=jnp.float32)
  assert "xnorjax_float_conv" not in jax.jit(bf16).lower(x, k).as_text()


@pytest.mark.parametrize("formulation", ["native", "winograd"])
def test_extension_formulations_bad_input(monkeypatch, formulation):
  x, k = jnp.ones((1, 6, 6, 4)), jnp.ones((3, 3, 4, 8))
  name = f"formulation='{formulation}'"
  with pytest.raises(ValueError, match=f"{name} supports strides 1 only, got strides=.2, 2."):
    conv2d(x, k, strides=2, formulation=formulation)
  with pytest.raises(TypeError, match=f"{name} computes in float32, got .* bfloat16"):
    conv2d(x.astype(jnp.bfloat16), k.astype(jnp.bfloat16), formulation=formulation)
  with pytest.raises(TypeError, match="preferred_element_type=bfloat16"):
    conv2d(x, k, formulation=formulation, preferred_element_type=jnp.bfloat16)
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  with pytest.raises(ValueError, match="runs on the CPU backend, not 'gpu'"):
    conv2d(x, k, formulation=formulation)


def test_ffi_targets_reject_inconsistent_shapes():
  """The handlers check their operands: an error naming the operand, never a crash."""
  x = jnp.ones((2, 6, 6, 4), jnp.float32)
  pads = ((1, 1), (1, 1))
  with pytest.raises(jax.errors.JaxRuntimeError, match="g must be f32.2, 6, 6, 8., got f32.2, 5, 6, 8."):
    jax.jit(lambda a, b: float_conv.kernel_grad(a, b, (3, 3), pads))(x, jnp.ones((2, 5, 6, 8)))
  with pytest.raises(jax.errors.JaxRuntimeError, match="x has 4 channels, the kernel 5"):
    jax.jit(lambda a, b: float_conv.conv(a, b, pads))(x, jnp.ones((3, 3, 5, 8)))
  with pytest.raises(ValueError, match="larger than the padded input"):
    jax.jit(lambda a, b: float_conv.conv(a, b, ((0, 0), (0, 0))))(x, jnp.ones((7, 7, 4, 8)))
  with pytest.raises(ValueError, match=r"pads must lie in \[0, kernel - 1\]"):
    float_conv.conv(x, jnp.ones((3, 3, 4, 8)), ((3, 1), (1, 1)))


# (op, operand b's shape, the output's shape) of the extension's float32 engines on
# x f32[12, 13, 11, 20] with a 3x3 kernel, 40 output channels and pads of 1: 1,716 output pixels
# (14 of the direct kernel gradient's 128-pixel chunks) and 144 Winograd tiles (2 of its
# 128-tile chunks); 20 and 40 channels leave tails in the 8 x 32 kernel-gradient blocks.
THREAD_CASES = [
    ("conv", (3, 3, 20, 40), (12, 13, 11, 40)),
    ("kernel_grad", (12, 13, 11, 40), (3, 3, 20, 40)),
    ("winograd_conv", (36, 20, 40), (12, 13, 11, 40)),
    ("winograd_kernel_grad", (12, 13, 11, 40), (36, 20, 40)),
]


@pytest.mark.parametrize("case", THREAD_CASES, ids=lambda case: case[0])
def test_results_do_not_depend_on_the_thread_count(rng, case):
  """Every output element has one summation order: the engines give the same bits on 1, 2, 3
  or 7 threads (test-only entry point, std::threads) and inside XLA (its pool: one thread per
  core), so a run reproduces on machines with other core counts."""
  op, b_shape, out_shape = case
  x = rng.standard_normal((12, 13, 11, 20)).astype(np.float32)
  b = rng.standard_normal(b_shape).astype(np.float32)
  engine = xnorjax.require_extension().float_conv
  results = []
  for threads in (1, 2, 3, 7):
    out = np.full(out_shape, np.nan, np.float32)  # poisoned: every element must be written
    engine.run_into(op, x, b, out, 3, 3, 40, 1, 1, 1, 1, threads)
    results.append(out)
  target = {"conv": "xnorjax_float_conv", "kernel_grad": "xnorjax_float_conv_kernel_grad",
            "winograd_conv": "xnorjax_winograd_conv",
            "winograd_kernel_grad": "xnorjax_winograd_kernel_grad"}[op]
  pads = ((1, 1), (1, 1))
  results.append(np.asarray(jax.jit(
      lambda a, c: float_conv.padded_ffi_call(target, out_shape, a, c, pads))(x, b)))
  assert np.isfinite(results[0]).all()
  for got in results[1:]:
    np.testing.assert_array_equal(got, results[0])


def test_thread_entry_point_bad_input():
  engine = xnorjax.require_extension().float_conv
  x = np.ones((1, 6, 6, 4), np.float32)
  out = np.empty((1, 6, 6, 8), np.float32)
  with pytest.raises(ValueError, match="op must be conv, kernel_grad, .*, got fft"):
    engine.run_into("fft", x, np.ones((3, 3, 4, 8), np.float32), out, 3, 3, 8, 1, 1, 1, 1, 1)
  with pytest.raises(ValueError, match=r"k must be f32\[3, 3, 4, 8\], got f32\[3, 3, 5, 8\]"):
    engine.run_into("conv", x, np.ones((3, 3, 5, 8), np.float32), out, 3, 3, 8, 1, 1, 1, 1, 1)
  with pytest.raises(ValueError, match="num_threads must be at least 1"):
    engine.run_into("conv", x, np.ones((3, 3, 4, 8), np.float32), out, 3, 3, 8, 1, 1, 1, 1, 0)
  with pytest.raises(ValueError, match="needs a 3x3 kernel, got 5x5"):
    engine.run_into("winograd_conv", x, np.ones((36, 4, 8), np.float32), out, 5, 5, 8, 1, 1, 1,
                    1, 1)


def test_native_under_vmap(rng):
  """vmap folds the mapped axis into the conv's batch; per-example kernel gradients map."""
  x = jnp.asarray(rng.standard_normal((3, 2, 6, 6, 8)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((3, 3, 8, 16)), jnp.float32)
  got = jax.vmap(lambda a: conv2d(a, k, formulation="native"))(x)
  want = jax.vmap(lambda a: conv2d(a, k, formulation="lax"))(x)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-4)
  per_example = lambda f: jax.vmap(jax.grad(lambda a, b: jnp.sum(conv2d(a, b, formulation=f) ** 2),
                                            argnums=1), (0, None))(x, k)
  np.testing.assert_allclose(np.asarray(per_example("native")), np.asarray(per_example("lax")),
                             rtol=1e-5, atol=1e-3)
  kernels = jnp.stack([k, -k])  # batched kernels: one call per kernel
  got = jax.vmap(lambda b: conv2d(x[0], b, formulation="native"))(kernels)
  np.testing.assert_allclose(np.asarray(got[1]), -np.asarray(got[0]), rtol=1e-6)


def test_native_stays_data_parallel_over_four_devices():
  """Each device convolves its shard of the batch and the kernel gradients are all-reduced."""
  run_data_parallel_script("native")
