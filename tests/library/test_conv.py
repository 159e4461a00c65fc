"""xnorjax.ops.conv2d: every formulation against a float64 numpy loop, forward and gradients."""


import jax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import pytest

from xnorjax.ops import conv as conv_lib
from xnorjax.ops import conv2d

from helpers.conv_reference import formulation_grads
from helpers.conv_reference import numpy_conv2d
from helpers.conv_reference import run_data_parallel_script


PADDINGS = ["SAME", "VALID", 1, ((2, 0), (0, 1))]
FORMULATIONS = ["lax", "im2col", "lax_im2col", "lax_padded", "auto"]


@pytest.mark.parametrize("formulation", FORMULATIONS)
@pytest.mark.parametrize("padding", PADDINGS, ids=str)
@pytest.mark.parametrize("strides", [1, 2, (1, 2)], ids=str)
@pytest.mark.parametrize("kernel_hw", [(3, 3), (1, 1), (2, 3)], ids=str)
def test_conv2d_matches_numpy(rng, formulation, padding, strides, kernel_hw):
  pad_value = float(rng.choice([0.0, -1.0, 1.0, 0.37]))
  x = rng.standard_normal((2, 7, 6, 3)).astype(np.float32)
  kernel = rng.standard_normal(kernel_hw + (3, 4)).astype(np.float32)
  got = jax.jit(lambda a, b: conv2d(a, b, strides=strides, padding=padding, pad_value=pad_value,
                                    formulation=formulation))(x, kernel)
  expected = numpy_conv2d(x, kernel, conv_lib.normalize_pair(strides, "strides"), padding, pad_value)
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("padding", PADDINGS, ids=str)
@pytest.mark.parametrize("strides", [1, 2], ids=str)
def test_conv2d_formulations_have_equal_gradients(rng, padding, strides):
  """All formulations give the same input and kernel gradients (float32, rtol 1e-5)."""
  pad_value = float(rng.choice([0.0, -1.0, 1.0]))
  x = jnp.asarray(rng.standard_normal((2, 6, 5, 3)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((3, 3, 3, 4)), jnp.float32)
  out_shape = conv2d(x, kernel, strides=strides, padding=padding, formulation="lax").shape
  cotangent = jnp.asarray(rng.standard_normal(out_shape), jnp.float32)
  grads = formulation_grads(x, kernel, cotangent, FORMULATIONS, strides=strides, padding=padding,
                            pad_value=pad_value)
  for formulation in FORMULATIONS[1:]:
    for got, ref in zip(grads[formulation], grads["lax"]):
      np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", [
    ((2, 18, 17, 5), (3, 3), 1, "SAME", 0.0),             # > 256 output pixels: a matmul per tap
    ((3, 7, 6, 4), (3, 2), 1, ((2, 0), (0, 1)), 0.0),     # asymmetric padding: padded convs
    ((2, 6, 6, 3), (3, 3), 1, 3, 0.0),                    # padding > kernel - 1: lax's own vjp
    ((2, 9, 8, 3), (3, 3), 2, "SAME", 0.0),               # stride 2: lax's own vjp
    ((2, 6, 5, 3), (3, 3), 1, "SAME", -1.0),              # +-1 padding: pre-padded, VALID conv
    ((2, 6, 5, 3), (3, 3), 1, "VALID", 0.0),
], ids=str)
def test_lax_padded_gradients_match_lax_autodiff(rng, case):
  """Every branch of lax_padded's backward pass against jax.grad of lax.conv (float32)."""
  x_shape, kernel_hw, strides, padding, pad_value = case
  x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal(kernel_hw + (x_shape[3], 6)), jnp.float32)
  out_shape = conv2d(x, kernel, strides=strides, padding=padding, formulation="lax").shape
  cotangent = jnp.asarray(rng.standard_normal(out_shape), jnp.float32)
  grads = formulation_grads(x, kernel, cotangent, ("lax", "lax_padded"), strides=strides,
                            padding=padding, pad_value=pad_value)
  for got, ref in zip(grads["lax_padded"], grads["lax"]):
    assert got.shape == ref.shape and got.dtype == ref.dtype
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-4)


def test_lax_padded_kernel_gradient_over_batch_chunks(rng, monkeypatch):
  """The kernel gradient accumulated over chunks of the batch equals the whole-batch one."""
  x = jnp.asarray(rng.standard_normal((12, 9, 8, 5)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((3, 3, 5, 6)), jnp.float32)
  cotangent = jnp.asarray(rng.standard_normal((12, 9, 8, 6)), jnp.float32)
  example_bytes = 4 * (9 * 8 * 5 + 9 * 8 * 6)
  monkeypatch.setattr(conv_lib, "_KERNEL_GRAD_CHUNK_BYTES", 3 * example_bytes)
  assert conv_lib._batch_chunks(12, example_bytes) == 4
  grads = formulation_grads(x, kernel, cotangent, ("lax", "lax_padded"), padding="SAME")
  for got, ref in zip(grads["lax_padded"], grads["lax"]):
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-4)


def test_lax_padded_stays_data_parallel_over_four_devices():
  """The batch is not split into chunks there (that would gather it)."""
  run_data_parallel_script("lax_padded")


# (input shape, kernel (h, w), strides, padding, pad_value): maps small enough for "unrolled".
UNROLLED_CASES = [
    ((2, 2, 2, 5), (3, 3), 1, "SAME", 0.0),       # VGG16's last stage, every pair joined by a tap
    ((2, 2, 2, 5), (3, 3), 1, "SAME", -1.0),      # +-1 padding: padded rows in the matrix
    ((2, 1, 1, 5), (3, 3), 1, "SAME", 0.37),
    ((2, 1, 3, 5), (3, 3), 1, 1, 1.0),
    ((2, 3, 2, 5), (2, 3), (1, 2), ((2, 0), (0, 1)), 0.0),
    ((2, 4, 4, 5), (3, 3), 2, "SAME", 0.0),       # stride 2: 4x4 -> 2x2, 64 blocks
    ((2, 3, 3, 5), (2, 2), 1, "VALID", 0.0),      # pairs joined by no tap: zero blocks
    ((2, 2, 2, 5), (1, 1), 1, "VALID", 0.0),
]


@pytest.mark.parametrize("case", UNROLLED_CASES, ids=str)
def test_unrolled_matches_numpy_and_lax_gradients(rng, case):
  """"unrolled" (one matmul with a matrix of kernel taps, its own backward) against the float64
  loop forward and jax.grad of lax.conv backward."""
  x_shape, kernel_hw, strides, padding, pad_value = case
  x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal(kernel_hw + (x_shape[3], 6)), jnp.float32)
  kwargs = dict(strides=strides, padding=padding, pad_value=pad_value)
  got = jax.jit(lambda a, b: conv2d(a, b, formulation="unrolled", **kwargs))(x, kernel)
  expected = numpy_conv2d(x, kernel, conv_lib.normalize_pair(strides, "strides"), padding,
                          pad_value)
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-5)
  cotangent = jnp.asarray(rng.standard_normal(got.shape), jnp.float32)
  grads = formulation_grads(x, kernel, cotangent, ("lax", "unrolled"), **kwargs)
  for got_grad, ref in zip(grads["unrolled"], grads["lax"]):
    assert got_grad.shape == ref.shape and got_grad.dtype == ref.dtype
    np.testing.assert_allclose(np.asarray(got_grad), np.asarray(ref), rtol=1e-5, atol=1e-5)


def test_unrolled_bfloat16_and_its_size_limit(rng):
  x = jnp.asarray(rng.standard_normal((2, 2, 2, 8)), jnp.bfloat16)
  kernel = jnp.asarray(rng.standard_normal((3, 3, 8, 4)), jnp.bfloat16)
  got = conv2d(x, kernel, formulation="unrolled", preferred_element_type=jnp.float32)
  expected = numpy_conv2d(np.asarray(x.astype(jnp.float32)), np.asarray(kernel.astype(jnp.float32)),
                          (1, 1), "SAME", 0.0)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-4)
  gx, gk = jax.grad(lambda a, b: jnp.sum(conv2d(a, b, formulation="unrolled")), (0, 1))(x, kernel)
  assert gx.dtype == gk.dtype == jnp.bfloat16
  # 5x5 maps: 25 x 25 blocks, over the limit: an error naming the formulation, not a huge matrix.
  with pytest.raises(ValueError, match=r"formulation='unrolled' is for tiny maps: input 5x5 and "
                                       r"output 5x5 would need 625 kernel-sized blocks"):
    conv2d(jnp.ones((1, 5, 5, 2)), jnp.ones((3, 3, 2, 2)), formulation="unrolled")


def test_unrolled_under_vmap(rng):
  """A batch of convs, each with its own kernel (the custom_vjp's batching rule)."""
  x = jnp.asarray(rng.standard_normal((3, 2, 2, 2, 5)), jnp.float32)
  kernels = jnp.asarray(rng.standard_normal((3, 3, 3, 5, 4)), jnp.float32)

  def loss(formulation):
    convs = jax.vmap(lambda a, b: conv2d(a, b, formulation=formulation))
    return lambda a, b: jnp.sum(convs(a, b) ** 2)

  got = jax.grad(loss("unrolled"), (0, 1))(x, kernels)
  for g, ref in zip(got, jax.grad(loss("lax"), (0, 1))(x, kernels)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(ref), rtol=1e-5, atol=1e-4)


def test_unrolled_stays_data_parallel_over_four_devices():
  """The kernel gradient's x^T g over a sharded batch is all-reduced, the batch never gathered."""
  run_data_parallel_script("unrolled", size=2)


def test_batch_chunks_policy():
  mib = 1 << 20
  assert conv_lib._batch_chunks(128, mib // 2) == 16   # 64->64 at 32x32: 8 examples per chunk
  assert conv_lib._batch_chunks(128, mib // 8) == 4    # 256->256 at 8x8: 32 per chunk
  assert conv_lib._batch_chunks(16, mib // 8) == 1     # the whole batch fits one chunk
  assert conv_lib._batch_chunks(127, mib // 2) == 1    # prime batch: no even split near 6
  assert conv_lib._batch_chunks(1, 64 * mib) == 1


@pytest.mark.parametrize("formulation", ["lax", "im2col"])
def test_conv2d_check_grads(rng, formulation):
  """Numerical vs autodiff gradients, both modes (lax_im2col is reverse-only, covered above)."""
  x = jnp.asarray(rng.standard_normal((1, 4, 4, 2)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((3, 3, 2, 2)), jnp.float32)
  fn = lambda a, b: conv2d(a, b, strides=1, padding="SAME", pad_value=-1.0, formulation=formulation)
  check_grads(fn, (x, kernel), order=1, modes=("fwd", "rev"), atol=2e-2, rtol=2e-2)


def test_conv2d_bfloat16_with_float32_accumulation(rng):
  x = rng.standard_normal((2, 5, 5, 8)).astype(np.float32)
  kernel = rng.standard_normal((3, 3, 8, 4)).astype(np.float32)
  xb, kb = jnp.asarray(x, jnp.bfloat16), jnp.asarray(kernel, jnp.bfloat16)
  expected = numpy_conv2d(np.asarray(xb.astype(jnp.float32)), np.asarray(kb.astype(jnp.float32)),
                          (1, 1), "SAME", 0.0)
  for formulation in ("lax", "im2col"):
    got = conv2d(xb, kb, strides=1, padding="SAME", formulation=formulation,
                 preferred_element_type=jnp.float32)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-4)


def test_choose_formulation_policy():
  """The XLA formulations (without the extension's "native" conv: tests/kernels/test_float_conv.py)."""
  same = lambda n: conv_lib.normalize_padding("SAME", (n, n), (3, 3), (1, 1))
  choose = lambda *args, **kw: conv_lib.choose_formulation(*args, native=False, **kw)
  assert choose((128, 2, 2, 512), (3, 3, 512, 512), (1, 1), same(2)) == "unrolled"
  assert choose((64, 1, 1, 512), (3, 3, 512, 512), (1, 1), same(1)) == "unrolled"
  # Small batches do not repay building the matrix; +-1 padding would add the padded positions'
  # rows; a larger input map would multiply the blocks.
  assert choose((16, 2, 2, 512), (3, 3, 512, 512), (1, 1), same(2)) == "im2col"
  assert choose((128, 2, 2, 512), (3, 3, 512, 512), (1, 1), same(2), pad_value=-1.0) == "im2col"
  stride2 = conv_lib.normalize_padding("SAME", (4, 4), (3, 3), (2, 2))
  assert choose((128, 4, 4, 512), (3, 3, 512, 512), (2, 2), stride2) == "im2col"
  assert choose((16, 32, 32, 3), (3, 3, 3, 64), (1, 1), same(32)) == "im2col"
  assert choose((16, 32, 32, 64), (3, 3, 64, 64), (1, 1), same(32)) == "lax_padded"
  assert choose((16, 32, 32, 64), (3, 3, 64, 64), (1, 1), same(32), pad_value=-1.0) == "lax_im2col"
  assert choose((16, 32, 32, 64), (3, 3, 64, 64), (2, 2), same(32)) == "lax_im2col"
  pads1 = conv_lib.normalize_padding("SAME", (32, 32), (1, 1), (1, 1))
  assert choose((16, 32, 32, 64), (1, 1, 64, 64), (1, 1), pads1) == "im2col"
  for shape in ((16, 2, 2, 512), (16, 32, 32, 64)):  # off the CPU: lax.conv (cuDNN on GPUs)
    kernel = (3, 3, shape[3], shape[3])
    assert conv_lib.choose_formulation(shape, kernel, (1, 1), same(shape[1]), backend="gpu") == "lax"


def test_policy_override_applies_within_its_block_only():
  x, k = jnp.ones((2, 8, 8, 16)), jnp.ones((3, 3, 16, 8))
  hlo = lambda: jax.jit(lambda a, b: conv2d(a, b)).lower(x, k).as_text()  # a fresh trace
  default = conv_lib.choose_formulation(x.shape, k.shape, (1, 1), ((1, 1), (1, 1)))
  seen = []

  def rule(input_shape, kernel_shape, strides, pads):
    seen.append((tuple(input_shape), tuple(kernel_shape), tuple(strides), pads))
    return "lax" if kernel_shape[2] == 16 else None

  other = ((2, 8, 8, 4), (3, 3, 4, 8), (1, 1), ((1, 1), (1, 1)))  # the rule answers None
  other_default = conv_lib.choose_formulation(*other)
  # The default is "winograd" with AVX-512F and "lax_padded" (an XLA convolution) without it.
  assert ("convolution(" in hlo()) == (default in ("lax", "lax_padded", "lax_im2col"))
  with conv_lib.policy_override(lambda *args: "im2col"):
    assert "convolution(" not in hlo()
  with conv_lib.policy_override(rule):
    assert conv_lib.choose_formulation(x.shape, k.shape, (1, 1), ((1, 1), (1, 1))) == "lax"
    assert "convolution(" in hlo()
    assert conv_lib.choose_formulation(*other) == other_default
  assert seen[0] == ((2, 8, 8, 16), (3, 3, 16, 8), (1, 1), ((1, 1), (1, 1)))
  assert conv_lib.choose_formulation(x.shape, k.shape, (1, 1), ((1, 1), (1, 1))) == default
  assert default != "lax"
  with conv_lib.policy_override(lambda *args: "fft"):
    with pytest.raises(ValueError, match="a policy_override rule returned 'fft', not one of"):
      conv2d(x, k)


def test_conv2d_bad_input():
  x, k = jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 3))
  with pytest.raises(ValueError, match="x must be a rank-4 NHWC"):
    conv2d(jnp.ones((4, 4, 2)), k)
  with pytest.raises(ValueError, match="kernel must be a rank-4 HWIO"):
    conv2d(x, jnp.ones((3, 2, 3)))
  with pytest.raises(TypeError, match="x must be a floating-point"):
    conv2d(jnp.ones((1, 4, 4, 2), jnp.int32), k)
  with pytest.raises(ValueError, match="x has 2 channels but kernel expects 5"):
    conv2d(x, jnp.ones((3, 3, 5, 3)))
  with pytest.raises(ValueError, match="larger than the padded input"):
    conv2d(jnp.ones((1, 2, 2, 2)), k, padding="VALID")
  for bad in ("FULL", -1, ((1, 2),), ((1, 2), (3,)), ((1.5, 1), (1, 1))):
    with pytest.raises(ValueError, match="padding must be"):
      conv2d(x, k, padding=bad)
  with pytest.raises(ValueError, match="strides must be"):
    conv2d(x, k, strides=0)
  with pytest.raises(ValueError, match="formulation must be one of"):
    conv2d(x, k, formulation="fft")
  with pytest.raises(TypeError, match="pad_value must be a Python number"):
    conv2d(x, k, pad_value="zero")
