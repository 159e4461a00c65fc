"""BinaryConv / BinaryDense binarize by default (XNOR-Net); a float layer is asked for explicitly."""

from flax import nnx
import jax.numpy as jnp
import numpy as np
import pytest

from xnorjax import nn as xnn

XNOR = dict(input_quantizer="ste_sign", kernel_quantizer="magnitude_aware_sign")
FLOAT = dict(input_quantizer=None, kernel_quantizer=None)


@pytest.mark.parametrize("make,shape", [
    (lambda seed, **q: xnn.BinaryConv(5, 4, 3, rngs=nnx.Rngs(seed), **q), (2, 6, 6, 5)),
    (lambda seed, **q: xnn.BinaryDense(5, 4, rngs=nnx.Rngs(seed), **q), (3, 5)),
], ids=["conv", "dense"])
def test_default_layer_is_xnor_net(rng, make, shape):
  seed = int(rng.integers(1 << 30))
  default, xnor, float_layer = make(seed), make(seed, **XNOR), make(seed, **FLOAT)
  x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  np.testing.assert_array_equal(np.asarray(default(x)), np.asarray(xnor(x)))
  assert not np.allclose(np.asarray(default(x)), np.asarray(float_layer(x)), atol=1e-3)
  assert default.input_quantizer is xnor.input_quantizer is not None
  assert default.kernel_quantizer is xnor.kernel_quantizer is not None
