"""BinaryConv / BinaryDense / BinaryConvBlock against independent references built from
lax.conv_general_dilated on explicitly binarized operands; transforms; bad input."""

import functools

from flax import nnx
import jax
from jax import lax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import pytest

from helpers.conv_reference import numpy_same_pads
from xnorjax import nn as xnn
from xnorjax.nn import functional

QUANTIZER_SETS = {  # name: (input_quantizer, kernel_quantizer, activation_scaling)
    "xnor": ("ste_sign", "magnitude_aware_sign", False),
    "xnor_k": ("ste_sign", "magnitude_aware_sign", True),
    "bnn": ("ste_sign", "ste_sign", False),
    "bwn": (None, "magnitude_aware_sign", False),
    "float": (None, None, False),
}
PADDINGS = ["SAME", "VALID", 1, ((0, 2), (1, 0))]


def _sign(a):
  return np.where(np.asarray(a) >= 0, 1.0, -1.0).astype(np.float32)


def _pads(padding, hw, kernel_hw, strides):
  if padding == "SAME":
    return tuple(numpy_same_pads(n, k, s) for n, k, s in zip(hw, kernel_hw, strides))
  if padding == "VALID":
    return ((0, 0), (0, 0))
  if isinstance(padding, int):
    return ((padding, padding),) * 2
  return padding


def _lax_valid(x, w, strides):
  return lax.conv_general_dilated(jnp.asarray(x), jnp.asarray(w), strides, "VALID",
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                  precision=lax.Precision.HIGHEST)


def reference_conv_layer(x, kernel, bias, *, strides, padding, input_quantizer, kernel_quantizer,
                         pad_value, activation_scaling):
  """Binarize explicitly in numpy, pad explicitly, then a VALID lax conv; K likewise."""
  x, kernel = np.asarray(x, np.float32), np.asarray(kernel, np.float32)
  xb = _sign(x) if input_quantizer else x
  if kernel_quantizer == "magnitude_aware_sign":
    wb = np.abs(kernel).mean(axis=(0, 1, 2), keepdims=True) * _sign(kernel)
  elif kernel_quantizer == "ste_sign":
    wb = _sign(kernel)
  else:
    wb = kernel
  pads = _pads(padding, x.shape[1:3], kernel.shape[:2], strides)
  xp = np.pad(xb, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=pad_value)
  y = _lax_valid(xp, wb, strides)
  if activation_scaling:
    a = np.pad(np.abs(x).mean(axis=-1, keepdims=True), ((0, 0), pads[0], pads[1], (0, 0)))
    kh, kw = kernel.shape[:2]
    y = y * _lax_valid(a, np.full((kh, kw, 1, 1), 1.0 / (kh * kw), np.float32), strides)
  if bias is not None:
    y = y + bias
  return np.asarray(y)


def _input_with_zeros(rng, shape):
  x = rng.standard_normal(shape).astype(np.float32)
  x.reshape(-1)[rng.choice(x.size, size=5, replace=False)] = 0.0
  return jnp.asarray(x)


def _seed(rng):
  return int(rng.integers(1 << 30))


@pytest.mark.parametrize("pad_value", [0.0, -1.0, 1.0])
@pytest.mark.parametrize("padding", PADDINGS, ids=str)
@pytest.mark.parametrize("strides", [1, 2])
@pytest.mark.parametrize("qset", list(QUANTIZER_SETS))
def test_binary_conv_matches_reference(rng, qset, strides, padding, pad_value):
  input_q, kernel_q, scaling = QUANTIZER_SETS[qset]
  layer = xnn.BinaryConv(3, 5, (3, 2), strides=strides, padding=padding, input_quantizer=input_q,
                         kernel_quantizer=kernel_q, pad_value=pad_value, activation_scaling=scaling,
                         use_bias=True, bias_init=nnx.initializers.normal(1.0), rngs=nnx.Rngs(_seed(rng)))
  assert layer.kernel.shape == (3, 2, 3, 5) and layer.bias.shape == (5,)
  x = _input_with_zeros(rng, (2, 7, 6, 3))
  expected = reference_conv_layer(
      x, layer.kernel[...], layer.bias[...], strides=(strides, strides), padding=padding,
      input_quantizer=input_q, kernel_quantizer=kernel_q, pad_value=pad_value,
      activation_scaling=scaling)
  np.testing.assert_allclose(np.asarray(layer(x)), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("padding", PADDINGS, ids=str)
@pytest.mark.parametrize("strides", [1, 2])
def test_float_binary_conv_is_a_drop_in_for_nnx_conv(rng, strides, padding):
  seed = _seed(rng)
  ours = xnn.BinaryConv(4, 6, 3, strides=strides, padding=padding, input_quantizer=None,
                        kernel_quantizer=None, use_bias=True, bias_init=nnx.initializers.normal(1.0), rngs=nnx.Rngs(seed))
  # nnx.Conv reads an int kernel_size as 1-D; ours as square (2-D only).
  theirs = nnx.Conv(4, 6, (3, 3), strides=strides, padding=padding, use_bias=True,
                    bias_init=nnx.initializers.normal(1.0), rngs=nnx.Rngs(seed))
  np.testing.assert_array_equal(np.asarray(ours.kernel[...]), np.asarray(theirs.kernel[...]))
  x = jnp.asarray(rng.standard_normal((2, 8, 7, 4)), jnp.float32)
  np.testing.assert_allclose(np.asarray(ours(x)), np.asarray(theirs(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("qset", ["xnor", "bnn", "bwn", "float"])
def test_binary_dense_matches_reference(rng, qset):
  input_q, kernel_q, _ = QUANTIZER_SETS[qset]
  layer = xnn.BinaryDense(6, 4, input_quantizer=input_q, kernel_quantizer=kernel_q, use_bias=True,
                          bias_init=nnx.initializers.normal(1.0), rngs=nnx.Rngs(_seed(rng)))
  assert layer.kernel.shape == (6, 4)
  x = _input_with_zeros(rng, (3, 2, 6))
  w = np.asarray(layer.kernel[...])
  xb = _sign(x) if input_q else np.asarray(x)
  wb = {"magnitude_aware_sign": np.abs(w).mean(axis=0, keepdims=True) * _sign(w),
        "ste_sign": _sign(w), None: w}[kernel_q]
  expected = np.einsum("abi,io->abo", xb.astype(np.float64), wb) + np.asarray(layer.bias[...])
  np.testing.assert_allclose(np.asarray(layer(x)), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pad_value", [0.0, -1.0])
def test_binary_conv_gradients_match_reference_ste(rng, pad_value):
  """BNN layer under nnx.grad: dL/dW = 1{|W|<=1} dL/dWb and dL/dx = 1{|x|<=1} dL/dxb, with dL/dWb
  and dL/dxb from the reference lax conv on the explicitly binarized operands."""
  layer = xnn.BinaryConv(3, 4, 3, strides=2, padding="SAME", input_quantizer="ste_sign",
                         kernel_quantizer="ste_sign", pad_value=pad_value,
                         kernel_init=nnx.initializers.normal(1.0), rngs=nnx.Rngs(_seed(rng)))
  x = _input_with_zeros(rng, (2, 7, 7, 3))
  cotangent = jnp.asarray(rng.standard_normal(layer(x).shape), jnp.float32)

  def loss(model, inputs):
    return jnp.sum(model(inputs) * cotangent)

  grads, x_grad = nnx.grad(loss, argnums=(0, 1))(layer, x)
  w = np.asarray(layer.kernel[...])
  pads = _pads("SAME", (7, 7), (3, 3), (2, 2))
  conv = lambda xb, wb: _lax_valid(jnp.pad(xb, ((0, 0), pads[0], pads[1], (0, 0)),
                                           constant_values=pad_value), wb, (2, 2))
  _, pullback = jax.vjp(conv, jnp.asarray(_sign(x)), jnp.asarray(_sign(w)))
  dxb, dwb = pullback(cotangent)
  np.testing.assert_allclose(np.asarray(grads["kernel"][...]), np.asarray(dwb) * (np.abs(w) <= 1),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(x_grad), np.asarray(dxb) * (np.abs(np.asarray(x)) <= 1),
                             rtol=1e-5, atol=1e-5)
  assert np.any(np.abs(w) > 1)  # the clipped region is exercised


def test_layers_under_jit_and_vmap(rng):
  layer = xnn.BinaryConv(3, 4, 3, input_quantizer="ste_sign", kernel_quantizer="magnitude_aware_sign",
                         activation_scaling=True, rngs=nnx.Rngs(_seed(rng)))
  x = _input_with_zeros(rng, (2, 5, 5, 3))
  np.testing.assert_allclose(np.asarray(nnx.jit(lambda m, a: m(a))(layer, x)), np.asarray(layer(x)),
                             rtol=1e-6, atol=1e-6)

  # An ensemble of 3 layers (stacked params) applied to 3 input batches with jax.vmap on the split.
  members = [xnn.BinaryDense(6, 2, input_quantizer="ste_sign", kernel_quantizer="magnitude_aware_sign",
                             use_bias=True, bias_init=nnx.initializers.normal(1.0), rngs=nnx.Rngs(_seed(rng)))
             for _ in range(3)]
  graphdef = nnx.graphdef(members[0])
  stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *[nnx.state(m) for m in members])
  xs = jnp.asarray(rng.standard_normal((3, 4, 6)), jnp.float32)
  got = jax.vmap(lambda state, a: nnx.merge(graphdef, state)(a))(stacked, xs)
  for i, member in enumerate(members):
    np.testing.assert_allclose(np.asarray(got[i]), np.asarray(member(xs[i])), rtol=1e-6, atol=1e-6)

  # nnx.vmap over a batch axis added in front of NHWC (e.g. per-device micro-batches).
  xs4 = jnp.asarray(rng.standard_normal((2, 2, 5, 5, 3)), jnp.float32)
  got4 = nnx.vmap(lambda m, a: m(a), in_axes=(None, 0))(layer, xs4)
  for i in range(2):
    np.testing.assert_allclose(np.asarray(got4[i]), np.asarray(layer(xs4[i])), rtol=1e-6, atol=1e-6)


def _reference_batch_norm(x, scale, bias, mean, var, eps):
  return (np.asarray(x) - mean) / np.sqrt(var + eps) * scale + bias


def test_binary_conv_block_train_and_eval(rng):
  block = xnn.BinaryConvBlock(3, 4, 3, activation=nnx.relu, rngs=nnx.Rngs(_seed(rng)))
  block.batch_norm.scale[...] = jnp.asarray(rng.uniform(0.5, 2.0, 3), jnp.float32)
  block.batch_norm.bias[...] = jnp.asarray(rng.standard_normal(3), jnp.float32)
  x = jnp.asarray(2.0 + rng.standard_normal((4, 5, 5, 3)), jnp.float32)
  scale, bias = np.asarray(block.batch_norm.scale[...]), np.asarray(block.batch_norm.bias[...])
  conv = functools.partial(reference_conv_layer, kernel=block.conv.kernel[...], bias=None, strides=(1, 1),
                           padding="SAME", input_quantizer="ste_sign",
                           kernel_quantizer="magnitude_aware_sign", pad_value=0.0,
                           activation_scaling=False)
  xn = np.asarray(x, np.float64)
  mean, var = xn.mean(axis=(0, 1, 2)), xn.var(axis=(0, 1, 2))
  expected = np.maximum(conv(_reference_batch_norm(xn, scale, bias, mean, var, 1e-5)), 0)
  np.testing.assert_allclose(np.asarray(block(x)), expected, rtol=1e-5, atol=1e-5)
  # Flax momentum 0.9 = PyTorch's 0.1: running = 0.9 * running + 0.1 * batch.
  block.eval()
  run_mean, run_var = 0.1 * mean, 0.9 + 0.1 * var
  np.testing.assert_allclose(np.asarray(block.batch_norm.mean[...]), run_mean, rtol=1e-5, atol=1e-6)
  expected_eval = np.maximum(conv(_reference_batch_norm(xn, scale, bias, run_mean, run_var, 1e-5)), 0)
  np.testing.assert_allclose(np.asarray(block(x)), expected_eval, rtol=1e-5, atol=1e-5)

  no_bn = xnn.BinaryConvBlock(3, 4, 3, use_batch_norm=False, rngs=nnx.Rngs(0))
  assert no_bn.batch_norm is None
  np.testing.assert_array_equal(np.asarray(no_bn(x)), np.asarray(no_bn.conv(x)))


def test_check_grads_smooth_parts(rng):
  """check_grads where the functions are smooth: K (inputs away from 0, where |x| is smooth) and a
  float block's BatchNorm + conv in training mode (batch statistics)."""
  x = rng.uniform(0.2, 1.5, (2, 5, 5, 3)) * rng.choice([-1.0, 1.0], (2, 5, 5, 3))
  for formulation in ("lax", "im2col"):
    k_fn = lambda a, f=formulation: functional.activation_scale(a, (3, 3), strides=2, padding="SAME",
                                                                formulation=f)
    check_grads(k_fn, (jnp.asarray(x, jnp.float32),), order=1, modes=("fwd", "rev"), atol=2e-2, rtol=2e-2)

  block = xnn.BinaryConvBlock(3, 2, 3, input_quantizer=None, kernel_quantizer=None,
                              formulation="im2col", rngs=nnx.Rngs(_seed(rng)))
  graphdef, state = nnx.split(block)
  block_fn = lambda a: nnx.merge(graphdef, state, copy=True)(a)
  check_grads(block_fn, (jnp.asarray(x, jnp.float32),), order=1, modes=("fwd", "rev"), atol=5e-2, rtol=5e-2)


def test_bad_input_errors():
  rngs = nnx.Rngs(0)
  layer = xnn.BinaryConv(3, 4, 3, input_quantizer="ste_sign", kernel_quantizer="ste_sign", rngs=rngs)
  with pytest.raises(ValueError, match="inputs must have rank 4"):
    layer(jnp.ones((5, 5, 3)))
  with pytest.raises(TypeError, match="inputs must be a floating-point"):
    layer(jnp.ones((1, 5, 5, 3), jnp.int32))
  with pytest.raises(ValueError, match="inputs have 2 channels"):
    layer(jnp.ones((1, 5, 5, 2)))
  with pytest.raises(ValueError, match="larger than the padded input.*kernel_size"):
    xnn.BinaryConv(3, 4, 5, padding="VALID", input_quantizer=None, kernel_quantizer=None,
                   rngs=rngs)(jnp.ones((1, 4, 4, 3)))
  with pytest.raises(ValueError, match="input_quantizer='sgn' is not a known quantizer"):
    xnn.BinaryConv(3, 4, 3, input_quantizer="sgn", rngs=rngs)
  with pytest.raises(ValueError, match="kernel_quantizer='xnor' is not a known quantizer"):
    xnn.BinaryDense(3, 4, kernel_quantizer="xnor", rngs=rngs)
  with pytest.raises(ValueError, match="pad_value must be 0, -1 or \\+1"):
    xnn.BinaryConv(3, 4, 3, input_quantizer="ste_sign", pad_value=0.5, rngs=rngs)
  with pytest.raises(TypeError, match="pad_value must be a Python number"):
    xnn.BinaryConv(3, 4, 3, pad_value="edge", rngs=rngs)
  for bad in ("CIRCULAR", -2, ((1, 1),), (1, 2, 3)):
    with pytest.raises(ValueError, match="padding must be"):
      xnn.BinaryConv(3, 4, 3, padding=bad, rngs=rngs)
  with pytest.raises(ValueError, match="kernel_size must be"):
    xnn.BinaryConv(3, 4, 0, rngs=rngs)
  with pytest.raises(ValueError, match="implementation must be one of"):
    xnn.BinaryConv(3, 4, 3, implementation="popcount", rngs=rngs)
  with pytest.raises(ValueError, match="activation_scaling=True needs an input_quantizer"):
    xnn.BinaryConv(3, 4, 3, input_quantizer=None, activation_scaling=True, rngs=rngs)
  with pytest.raises(ValueError, match="in_features must be a positive int"):
    xnn.BinaryDense(0, 4, rngs=rngs)
  dense = xnn.BinaryDense(3, 4, rngs=rngs)
  with pytest.raises(ValueError, match="inputs must end in in_features=3"):
    dense(jnp.ones((2, 5)))
  with pytest.raises(TypeError, match="inputs must be a floating-point"):
    dense(jnp.ones((2, 3), jnp.int8))
