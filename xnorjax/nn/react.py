"""ReActNet's learnable activations (Liu et al. 2020, "ReActNet: Towards Precise Binary Neural
Network with Generalized Activation Functions"), per channel (the last axis, NHWC):

  RSign(x)  = sign(x - beta)                       a learnable threshold beta before the sign;
  RPReLU(x) = PReLU(x - gamma; slope) + zeta        shifts before and after a PReLU.

RSign's gradient is its quantizer's surrogate: with "ste_sign" d/dx = 1{|x - beta| <= 1} and
d/dbeta = -(the same), summed over the other axes. Its output is +-1, so it feeds a BinaryConv
whose own input quantizer is "ste_sign": that sign is the identity on +-1 values (forward, and its
straight-through gradient, since |+-1| <= 1), and the conv keeps its packed XNOR-popcount
implementation (the shift happens before the sign, outside the packed product).
"""

from __future__ import annotations

from flax import nnx
import jax
import jax.numpy as jnp

from xnorjax import quantizers

RSIGN_QUANTIZERS = ("ste_sign", "approx_sign")  # sign forwards: the output stays +-1.
PRELU_SLOPE_INIT = 0.25  # PyTorch's nn.PReLU default, as ReActNet's code.


def _check_features(value, name: str = "features") -> int:
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"{name} must be a positive int, got {value!r}")
  return value


def _check_channels(x: jax.Array, features: int, layer: str) -> jax.Array:
  x = jnp.asarray(x)
  if x.ndim < 1 or x.shape[-1] != features:
    raise ValueError(f"{layer} has {features} channels but its input has shape {x.shape} "
                     "(channels last)")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"{layer}'s input must be a floating-point array, got dtype {x.dtype}")
  return x


class RSign(nnx.Module):
  """sign(x - beta) with a learnable per-channel threshold `beta` (initialised to 0).

  Args:
    features: number of channels (the input's last axis).
    quantizer: "ste_sign" (default) or "approx_sign": the sign and its surrogate gradient.
  """

  def __init__(self, features: int, *, quantizer: str = "ste_sign", param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    del rngs  # Deterministic initialisation; taken for the usual layer signature.
    self.features = _check_features(features)
    if quantizer not in RSIGN_QUANTIZERS:
      raise ValueError(f"quantizer must be one of {RSIGN_QUANTIZERS} (a sign), got {quantizer!r}")
    self.quantizer = quantizer
    self.beta = nnx.Param(jnp.zeros((features,), param_dtype))

  def __call__(self, x: jax.Array) -> jax.Array:
    x = _check_channels(x, self.features, "RSign")
    return quantizers.get(self.quantizer)(x - self.beta[...].astype(x.dtype))


class RPReLU(nnx.Module):
  """PReLU(x - gamma) + zeta per channel: x - gamma where positive, else slope * (x - gamma).

  gamma and zeta start at 0, the slope at 0.25 (ReActNet's initialisation).
  """

  def __init__(self, features: int, *, slope_init: float = PRELU_SLOPE_INIT,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    del rngs
    self.features = _check_features(features)
    self.gamma = nnx.Param(jnp.zeros((features,), param_dtype))
    self.slope = nnx.Param(jnp.full((features,), slope_init, param_dtype))
    self.zeta = nnx.Param(jnp.zeros((features,), param_dtype))

  def __call__(self, x: jax.Array) -> jax.Array:
    x = _check_channels(x, self.features, "RPReLU")
    z = x - self.gamma[...].astype(x.dtype)
    return jnp.where(z > 0, z, self.slope[...].astype(x.dtype) * z) + self.zeta[...].astype(x.dtype)
