"""BinaryConv / BinaryDense with forward="packed" (XNOR-popcount kernels) against forward="xla".

Tolerance: the packed kernel's integer dot is exact and is scaled by alpha once; the float path
sums K terms of +-alpha in float32, so they agree to a few float32 ulps of the largest partial sum:
rtol 1e-5 and atol 1e-5 * alpha * K.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import xnorjax.nn as xnn
from xnorjax.nn import functional
from conftest import requires_extension

pytestmark = requires_extension

XNOR = dict(input_quantizer="ste_sign", kernel_quantizer="magnitude_aware_sign")
BNN = dict(input_quantizer="approx_sign", kernel_quantizer="ste_sign")


def _tolerance(layer, fan_in):
  alpha = float(jnp.max(jnp.mean(jnp.abs(layer.kernel[...]), axis=tuple(range(layer.kernel.ndim - 1)))))
  return dict(rtol=1e-5, atol=1e-5 * max(alpha, 1.0) * fan_in)


def _hlo(fn, *args):
  return jax.jit(fn).lower(*args).as_text()


@pytest.mark.parametrize("quantizers", [XNOR, BNN], ids=["xnor", "bnn"])
@pytest.mark.parametrize("pad_value", [0.0, -1.0, 1.0])
@pytest.mark.parametrize("strides,padding", [(1, "SAME"), (2, "SAME"), (1, "VALID"), (2, ((2, 0), (1, 1)))])
def test_conv_packed_equals_xla(rng, quantizers, pad_value, strides, padding):
  layer = xnn.BinaryConv(37, 19, (3, 3), strides=strides, padding=padding, pad_value=pad_value,
                         use_bias=True, rngs=nnx.Rngs(int(rng.integers(1 << 30))), **quantizers)
  layer.bias[...] = jnp.asarray(rng.standard_normal(19), jnp.float32)
  x = jnp.asarray(rng.standard_normal((2, 9, 7, 37)), jnp.float32)
  layer.forward = "xla"
  want = layer(x)
  layer.forward = "packed"
  got = layer(x)
  assert "xnorjax_xnor_conv" in _hlo(lambda v: layer(v), x)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), **_tolerance(layer, 9 * 37))


def test_conv_packed_activation_scaling(rng):
  layer = xnn.BinaryConv(16, 8, (3, 3), activation_scaling=True, rngs=nnx.Rngs(1), **XNOR)
  x = jnp.asarray(rng.standard_normal((2, 6, 6, 16)), jnp.float32)
  want = layer(x)
  layer.forward = "packed"
  np.testing.assert_allclose(np.asarray(layer(x)), np.asarray(want), **_tolerance(layer, 9 * 16))


@pytest.mark.parametrize("quantizers", [XNOR, BNN], ids=["xnor", "bnn"])
def test_dense_packed_equals_xla(rng, quantizers):
  layer = xnn.BinaryDense(70, 33, rngs=nnx.Rngs(int(rng.integers(1 << 30))), **quantizers)
  x = jnp.asarray(rng.standard_normal((3, 5, 70)), jnp.float32)
  want = layer(x)
  layer.forward = "packed"
  got = layer(x)
  assert "xnorjax_xnor_dense" in _hlo(lambda v: layer(v), x)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), **_tolerance(layer, 70))


def test_packed_gradients_equal_xla_gradients(rng):
  """The backward pass of "packed" is the float product's vjp: same gradients as "xla"."""
  layer = xnn.BinaryConv(20, 12, (3, 3), strides=2, pad_value=-1.0, rngs=nnx.Rngs(3), **XNOR)
  x = jnp.asarray(rng.standard_normal((2, 8, 8, 20)), jnp.float32)
  g = jnp.asarray(rng.standard_normal((2, 4, 4, 12)), jnp.float32)

  def grads(forward):
    layer.forward = forward
    def loss(model, x):
      return jnp.sum(model(x) * g)
    return nnx.grad(loss, argnums=(0, 1))(layer, x)

  (gm_xla, gx_xla), (gm_packed, gx_packed) = grads("xla"), grads("packed")
  np.testing.assert_allclose(np.asarray(gx_packed), np.asarray(gx_xla), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(gm_packed["kernel"][...]), np.asarray(gm_xla["kernel"][...]),
                             rtol=1e-5, atol=1e-5)
  assert float(jnp.abs(gx_xla).sum()) > 0  # a zero gradient would make the comparison empty


def test_auto_packs_on_cpu_in_training_and_inference(rng):
  layer = xnn.BinaryConv(16, 8, (3, 3), rngs=nnx.Rngs(0), **XNOR)
  x = jnp.asarray(rng.standard_normal((2, 6, 6, 16)), jnp.float32)
  assert jax.default_backend() == "cpu"
  assert "xnorjax_xnor_conv" in _hlo(lambda v: layer(v), x)
  layer.eval()
  assert "xnorjax_xnor_conv" in _hlo(lambda v: layer(v), x)
  # The training step's gradient of an "auto" layer is the float product's (straight-through).
  loss = lambda f: jnp.sum(xnn.BinaryConv(16, 8, (3, 3), forward=f, rngs=nnx.Rngs(0), **XNOR)(x) ** 2)
  np.testing.assert_allclose(float(loss("auto")), float(loss("xla")), rtol=1e-5)
  grad = lambda f: jax.grad(lambda v: jnp.sum(
      xnn.BinaryConv(16, 8, (3, 3), forward=f, rngs=nnx.Rngs(0), **XNOR)(v) ** 2))(x)
  np.testing.assert_allclose(np.asarray(grad("auto")), np.asarray(grad("xla")), rtol=1e-4, atol=1e-4)


def test_auto_uses_xla_off_the_cpu(monkeypatch):
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  quant = functional.quantizers.get("ste_sign")
  kquant = functional.quantizers.get("magnitude_aware_sign")
  assert functional.resolve_forward("auto", quant, kquant) == "xla"
  assert functional.resolve_forward("packed", quant, kquant) == "packed"


def test_block_eval_runs_packed_and_matches(rng):
  model = xnn.BinaryConvBlock(16, 8, (3, 3), rngs=nnx.Rngs(0))
  x = jnp.asarray(rng.standard_normal((2, 6, 6, 16)), jnp.float32)
  model.eval()
  assert "xnorjax_xnor_conv" in _hlo(lambda v: model(v), x)
  packed = model(x)
  model.conv.forward = "xla"
  np.testing.assert_allclose(np.asarray(packed), np.asarray(model(x)), **_tolerance(model.conv, 9 * 16))


def test_auto_keeps_float_layers_on_xla(rng):
  layer = xnn.BinaryConv(8, 4, (3, 3), input_quantizer=None, kernel_quantizer=None,
                         rngs=nnx.Rngs(0))  # no quantizers: a float conv
  layer.eval()
  x = jnp.asarray(rng.standard_normal((1, 5, 5, 8)), jnp.float32)
  assert "xnorjax_xnor_conv" not in _hlo(lambda v: layer(v), x)


@pytest.mark.parametrize("quantizers", [dict(input_quantizer=None,
                                             kernel_quantizer="magnitude_aware_sign"),
                                        dict(input_quantizer="ste_sign", kernel_quantizer=None),
                                        dict(input_quantizer="ste_sign", kernel_quantizer=lambda w: w)])
def test_packed_rejects_layers_it_cannot_reproduce(quantizers):
  with pytest.raises(ValueError, match="forward='packed' needs input_quantizer"):
    xnn.BinaryConv(8, 4, (3, 3), forward="packed", rngs=nnx.Rngs(0), **quantizers)
  with pytest.raises(ValueError, match="forward must be one of"):
    xnn.BinaryDense(8, 4, forward="popcount", rngs=nnx.Rngs(0))
  assert not functional.packable(None, None)


def test_binarized_products_need_a_concrete_forward():
  x, w = jnp.ones((2, 4)), jnp.ones((4, 3))
  with pytest.raises(ValueError, match="dense_binarized needs a concrete forward"):
    functional.dense_binarized(x, w, forward="auto")
  with pytest.raises(ValueError, match="conv_binarized needs a concrete forward"):
    functional.conv_binarized(jnp.ones((1, 3, 3, 4)), jnp.ones((3, 3, 4, 2)), forward="auto")
