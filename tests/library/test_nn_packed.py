"""BinaryConv / BinaryDense with implementation="packed" (XNOR-popcount kernels) against "float".

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
from xnorjax import quantizers as xquantizers
from xnorjax.nn import functional
from helpers.markers import requires_extension

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
def test_conv_packed_equals_float(rng, quantizers, pad_value, strides, padding):
  layer = xnn.BinaryConv(37, 19, (3, 3), strides=strides, padding=padding, pad_value=pad_value,
                         use_bias=True, rngs=nnx.Rngs(int(rng.integers(1 << 30))), **quantizers)
  layer.bias[...] = jnp.asarray(rng.standard_normal(19), jnp.float32)
  x = jnp.asarray(rng.standard_normal((2, 9, 7, 37)), jnp.float32)
  layer.implementation = "float"
  want = layer(x)
  layer.implementation = "packed"
  got = layer(x)
  assert "xnorjax_xnor_conv" in _hlo(lambda v: layer(v), x)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), **_tolerance(layer, 9 * 37))


def test_conv_packed_activation_scaling(rng):
  layer = xnn.BinaryConv(16, 8, (3, 3), activation_scaling=True, rngs=nnx.Rngs(1), **XNOR)
  x = jnp.asarray(rng.standard_normal((2, 6, 6, 16)), jnp.float32)
  want = layer(x)
  layer.implementation = "packed"
  np.testing.assert_allclose(np.asarray(layer(x)), np.asarray(want), **_tolerance(layer, 9 * 16))


@pytest.mark.parametrize("quantizers", [XNOR, BNN], ids=["xnor", "bnn"])
def test_dense_packed_equals_float(rng, quantizers):
  layer = xnn.BinaryDense(70, 33, rngs=nnx.Rngs(int(rng.integers(1 << 30))), **quantizers)
  x = jnp.asarray(rng.standard_normal((3, 5, 70)), jnp.float32)
  want = layer(x)
  layer.implementation = "packed"
  got = layer(x)
  assert "xnorjax_xnor_dense" in _hlo(lambda v: layer(v), x)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), **_tolerance(layer, 70))


def test_packed_gradients_equal_float_gradients(rng):
  """The backward pass of "packed" is the float product's vjp: same gradients as "float"."""
  layer = xnn.BinaryConv(20, 12, (3, 3), strides=2, pad_value=-1.0, rngs=nnx.Rngs(3), **XNOR)
  x = jnp.asarray(rng.standard_normal((2, 8, 8, 20)), jnp.float32)
  g = jnp.asarray(rng.standard_normal((2, 4, 4, 12)), jnp.float32)

  def grads(implementation):
    layer.implementation = implementation
    def loss(model, x):
      return jnp.sum(model(x) * g)
    return nnx.grad(loss, argnums=(0, 1))(layer, x)

  (gm_float, gx_float), (gm_packed, gx_packed) = grads("float"), grads("packed")
  np.testing.assert_allclose(np.asarray(gx_packed), np.asarray(gx_float), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(gm_packed["kernel"][...]), np.asarray(gm_float["kernel"][...]),
                             rtol=1e-5, atol=1e-5)
  assert float(jnp.abs(gx_float).sum()) > 0  # a zero gradient would make the comparison empty


def test_auto_packs_on_cpu_in_training_and_inference(rng):
  layer = xnn.BinaryConv(16, 8, (3, 3), rngs=nnx.Rngs(0), **XNOR)
  x = jnp.asarray(rng.standard_normal((2, 6, 6, 16)), jnp.float32)
  assert jax.default_backend() == "cpu"
  assert "xnorjax_xnor_conv" in _hlo(lambda v: layer(v), x)
  layer.eval()
  assert "xnorjax_xnor_conv" in _hlo(lambda v: layer(v), x)
  # The training step's gradient of an "auto" layer is the float product's (straight-through).
  layer_of = lambda f: xnn.BinaryConv(16, 8, (3, 3), implementation=f, rngs=nnx.Rngs(0), **XNOR)
  loss = lambda f: jnp.sum(layer_of(f)(x) ** 2)
  np.testing.assert_allclose(float(loss("auto")), float(loss("float")), rtol=1e-5)
  grad = lambda f: jax.grad(lambda v: jnp.sum(layer_of(f)(v) ** 2))(x)
  np.testing.assert_allclose(np.asarray(grad("auto")), np.asarray(grad("float")), rtol=1e-4, atol=1e-4)


def test_auto_uses_float_off_the_cpu(monkeypatch):
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  quant = functional.quantizers.get("ste_sign")
  kquant = functional.quantizers.get("magnitude_aware_sign")
  assert functional.resolve_implementation("auto", quant, kquant) == "float"
  assert functional.resolve_implementation("packed", quant, kquant) == "packed"


def test_block_eval_runs_packed_and_matches(rng):
  model = xnn.BinaryConvBlock(16, 8, (3, 3), rngs=nnx.Rngs(0))
  x = jnp.asarray(rng.standard_normal((2, 6, 6, 16)), jnp.float32)
  model.eval()
  assert "xnorjax_xnor_conv" in _hlo(lambda v: model(v), x)
  packed = model(x)
  model.conv.implementation = "float"
  np.testing.assert_allclose(np.asarray(packed), np.asarray(model(x)), **_tolerance(model.conv, 9 * 16))


def test_auto_keeps_float_layers_float(rng):
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
  with pytest.raises(ValueError, match="implementation='packed' needs input_quantizer"):
    xnn.BinaryConv(8, 4, (3, 3), implementation="packed", rngs=nnx.Rngs(0), **quantizers)
  with pytest.raises(ValueError, match="implementation must be one of"):
    xnn.BinaryDense(8, 4, implementation="popcount", rngs=nnx.Rngs(0))
  assert not functional.packable(None, None)


def test_binarized_products_need_a_concrete_implementation():
  x, w = jnp.ones((2, 4)), jnp.ones((4, 3))
  with pytest.raises(ValueError, match="dense_binarized needs a concrete implementation"):
    functional.dense_binarized(x, w, implementation="auto")
  with pytest.raises(ValueError, match="conv_binarized needs a concrete implementation"):
    functional.conv_binarized(jnp.ones((1, 3, 3, 4)), jnp.ones((3, 3, 4, 2)), implementation="auto")


@jax.custom_vjp
def _narrow_sign(x):
  return jnp.where(x >= 0, 1.0, -1.0).astype(x.dtype)


_narrow_sign.defvjp(lambda x: (_narrow_sign(x), x),
                    lambda x, g: (jnp.where(jnp.abs(x) <= 0.5, g, jnp.zeros_like(g)),))
NARROW_SIGN = xquantizers.sign_like()(_narrow_sign)  # a user's sign with window |x| <= 0.5


def _undeclared_narrow_sign(x):
  return _narrow_sign(x)


@pytest.mark.parametrize("implementation", ["packed", "auto"])
def test_user_sign_quantizer_runs_packed_with_its_own_gradient(rng, implementation):
  """A quantizer declared sign-like gets the packed forward; its straight-through window stays."""
  def layer(implementation):
    return xnn.BinaryConv(16, 8, (3, 3), input_quantizer=NARROW_SIGN,
                          kernel_quantizer="magnitude_aware_sign", implementation=implementation,
                          rngs=nnx.Rngs(0))

  x = jnp.asarray(rng.standard_normal((2, 6, 6, 16)), jnp.float32)
  packed, reference = layer(implementation), layer("float")
  assert "xnorjax_xnor_conv" in _hlo(lambda v: packed(v), x)
  assert "xnorjax_xnor_conv" not in _hlo(lambda v: reference(v), x)
  np.testing.assert_allclose(np.asarray(packed(x)), np.asarray(reference(x)),
                             **_tolerance(reference, 9 * 16))
  grad = lambda m: np.asarray(jax.grad(lambda v: jnp.sum(m(v) ** 2))(x))
  g_packed, g_float = grad(packed), grad(reference)
  np.testing.assert_allclose(g_packed, g_float, rtol=1e-4, atol=1e-4)
  outside = np.abs(np.asarray(x)) > 0.5
  assert np.all(g_packed[outside] == 0)  # the user's window, not ste_sign's |x| <= 1
  assert np.mean(g_packed[~outside] != 0) > 0.9


def test_undeclared_user_quantizer_stays_float(rng):
  layer = xnn.BinaryConv(16, 8, (3, 3), input_quantizer=_undeclared_narrow_sign,
                         kernel_quantizer="magnitude_aware_sign", rngs=nnx.Rngs(0))
  x = jnp.asarray(rng.standard_normal((1, 5, 5, 16)), jnp.float32)
  assert "xnorjax_xnor_conv" not in _hlo(lambda v: layer(v), x)
  with pytest.raises(ValueError, match="implementation='packed' needs input_quantizer"):
    xnn.BinaryConv(16, 8, (3, 3), input_quantizer=_undeclared_narrow_sign,
                   kernel_quantizer="magnitude_aware_sign", implementation="packed",
                   rngs=nnx.Rngs(0))
