"""ReActNet's RSign and RPReLU (xnorjax/nn/react.py): forward and closed-form gradients (numpy),
and an RSign -> BinaryConv block whose packed implementation equals the float one."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import xnorjax.nn as xnn
from xnorjax.nn import react
from helpers.markers import requires_extension


def _rsign(rng, channels=5, quantizer="ste_sign"):
  layer = react.RSign(channels, quantizer=quantizer, rngs=nnx.Rngs(0))
  layer.beta[...] = jnp.asarray(rng.normal(size=channels), jnp.float32)
  return layer


def test_rsign_forward_and_closed_form_gradients(rng):
  layer = _rsign(rng)
  x = jnp.asarray(1.5 * rng.normal(size=(3, 4, 4, 5)), jnp.float32)
  x = x.at[0, 0, 0].set(layer.beta[...])  # x == beta: sign(0) = +1
  g = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
  z = np.asarray(x) - np.asarray(layer.beta[...])
  np.testing.assert_array_equal(layer(x), np.where(z >= 0, 1.0, -1.0))
  assert np.all(np.asarray(layer(x))[0, 0, 0] == 1.0)

  def loss(model, x):
    return jnp.sum(model(x) * g)

  grad_model, grad_x = nnx.grad(loss, argnums=(0, 1))(layer, x)
  window = (np.abs(z) <= 1.0) * np.asarray(g)
  np.testing.assert_allclose(grad_x, window, rtol=1e-6)
  np.testing.assert_allclose(grad_model.beta[...], -window.sum(axis=(0, 1, 2)), rtol=1e-5, atol=1e-6)
  assert np.any(window != 0) and np.any((window == 0) & (np.asarray(g) != 0))  # both regions


def test_rsign_with_approx_sign_gradient(rng):
  layer = _rsign(rng, quantizer="approx_sign")
  x = jnp.asarray(rng.normal(size=(6, 5)), jnp.float32)
  g = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
  z = np.asarray(x) - np.asarray(layer.beta[...])
  grad_model, grad_x = nnx.grad(lambda m, x: jnp.sum(m(x) * g), argnums=(0, 1))(layer, x)
  want = np.where(np.abs(z) < 1, (2 - 2 * np.abs(z)) * np.asarray(g), 0.0)
  np.testing.assert_allclose(grad_x, want, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(grad_model.beta[...], -want.sum(0), rtol=1e-5, atol=1e-6)


def test_rprelu_forward_and_closed_form_gradients(rng):
  layer = react.RPReLU(4, rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(layer.slope[...], 0.25)
  for name in ("gamma", "slope", "zeta"):
    getattr(layer, name)[...] = jnp.asarray(rng.normal(size=4), jnp.float32)
  gamma, slope, zeta = (np.asarray(getattr(layer, n)[...], np.float64) for n in ("gamma", "slope", "zeta"))
  x = jnp.asarray(rng.normal(size=(2, 3, 3, 4)), jnp.float32)
  g = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
  z = np.asarray(x, np.float64) - gamma
  positive = z > 0
  np.testing.assert_allclose(layer(x), np.where(positive, z, slope * z) + zeta, rtol=1e-6, atol=1e-6)
  grad_model, grad_x = nnx.grad(lambda m, x: jnp.sum(m(x) * g), argnums=(0, 1))(layer, x)
  g64 = np.asarray(g, np.float64)
  dz = g64 * np.where(positive, 1.0, slope)
  axes = (0, 1, 2)
  np.testing.assert_allclose(grad_x, dz, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(grad_model.gamma[...], -dz.sum(axes), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(grad_model.slope[...], (g64 * z * ~positive).sum(axes), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(grad_model.zeta[...], g64.sum(axes), rtol=1e-5, atol=1e-6)
  assert positive.any() and (~positive).any()


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match="quantizer must be one of"):
    react.RSign(3, quantizer="magnitude_aware_sign", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="features must be a positive int, got 0"):
    react.RPReLU(0, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"RSign has 3 channels but its input has shape \(2, 4\)"):
    react.RSign(3, rngs=nnx.Rngs(0))(jnp.zeros((2, 4)))
  with pytest.raises(ValueError, match=r"RPReLU has 3 channels but its input has shape \(2, 4\)"):
    react.RPReLU(3, rngs=nnx.Rngs(0))(jnp.zeros((2, 4)))
  with pytest.raises(TypeError, match="RSign's input must be a floating-point array"):
    react.RSign(4, rngs=nnx.Rngs(0))(jnp.zeros((2, 4), jnp.int32))


class _Block(nnx.Module):
  """RSign -> BinaryConv (XNOR: sign inputs, alpha * sign(W) kernels)."""

  def __init__(self, rngs):
    self.rsign = react.RSign(24, rngs=rngs)
    self.conv = xnn.BinaryConv(24, 16, (3, 3), input_quantizer="ste_sign",
                               kernel_quantizer="magnitude_aware_sign", rngs=rngs)

  def __call__(self, x):
    return self.conv(self.rsign(x))


@requires_extension
def test_rsign_block_packed_equals_float(rng):
  block = _Block(nnx.Rngs(2))
  block.rsign.beta[...] = jnp.asarray(0.5 * rng.normal(size=24), jnp.float32)
  x = jnp.asarray(rng.normal(size=(2, 7, 6, 24)), jnp.float32)
  g = jnp.asarray(rng.normal(size=(2, 7, 6, 16)), jnp.float32)

  def run(implementation):
    block.conv.implementation = implementation
    out = block(x)
    grads = nnx.grad(lambda m, x: jnp.sum(m(x) * g), argnums=(0, 1))(block, x)
    return out, grads, jax.jit(lambda v: block(v)).lower(x).as_text()

  (want, (gm_f, gx_f), _), (got, (gm_p, gx_p), hlo) = run("float"), run("packed")
  assert "xnorjax_xnor_conv" in hlo
  alpha = float(jnp.max(jnp.mean(jnp.abs(block.conv.kernel[...]), axis=(0, 1, 2))))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * max(alpha, 1.0) * 9 * 24)
  np.testing.assert_allclose(gx_p, gx_f, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(gm_p.rsign.beta[...], gm_f.rsign.beta[...], rtol=1e-5, atol=1e-5)
  # The conv's ste_sign is the identity on RSign's +-1 output: the block's input gradient is the
  # conv's input gradient through RSign's window alone.
  z = np.asarray(x) - np.asarray(block.rsign.beta[...])
  _, conv_input_grad = nnx.grad(lambda m, v: jnp.sum(m(v) * g), argnums=(0, 1))(
      block.conv, block.rsign(x))
  np.testing.assert_allclose(gx_f, np.asarray(conv_input_grad) * (np.abs(z) <= 1), rtol=1e-6)
