"""Quantizers for binary networks (larq's vocabulary).

A quantizer maps a float array to a binarized array of the same shape and dtype, with a surrogate
gradient for training:

  ste_sign              sign(x) in {-1, +1}, straight-through gradient 1{|x| <= clip_value}.
  approx_sign           sign(x), Bi-Real Net's gradient 2 - 2|x| on |x| < 1.
  magnitude_aware_sign  alpha * sign(w), alpha = mean |w| per output channel (XNOR-Net's weights).

sign(0) = +1 everywhere, the bit encoding of `xnorjax.ops.pack_bits` (bit 1 = +1), so that a packed
kernel reproduces these values exactly. `get` resolves a quantizer from its name; `None` means "no
quantization" (float).

A quantizer declares what its forward computes with the `sign_like` decorator (attributes
`precision = 1` and `forward_kind`, larq's `precision` in spirit): "sign" for sign(x), "scaled_sign"
for c * sign(x) with c >= 0 constant over all axes but the last (per output channel). The packed
XNOR-popcount kernels run exactly these, whatever the gradient, so a user's own sign quantizer
(another straight-through window, another surrogate) gets the packed forward once it is declared.
The declaration is read through `functools.partial`, so configured variants keep it.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional, Union

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

Quantizer = Callable[[jax.Array], jax.Array]

SIGN = "sign"
SCALED_SIGN = "scaled_sign"
FORWARD_KINDS = (SIGN, SCALED_SIGN)

MAGNITUDE_AWARE_GRADIENTS = ("exact", "paper", "stop_alpha")


def _check_float(x, name: str) -> jax.Array:
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"{name} must be a floating-point array, got dtype {x.dtype}")
  return x


def check_clip_value(clip_value) -> float:
  """clip_value as a positive float (it is static: a Python number, not an array)."""
  if isinstance(clip_value, (jax.Array, np.ndarray)) or not np.isscalar(clip_value):
    raise TypeError(f"clip_value must be a Python number (it is static), got {type(clip_value).__name__}")
  clip_value = float(clip_value)
  if not clip_value > 0:
    raise ValueError(f"clip_value must be positive, got {clip_value}")
  return clip_value


def _sign(x: jax.Array) -> jax.Array:
  """+1 where x >= 0, else -1 (NaN -> -1, as pack_bits), in x's dtype."""
  return jnp.where(x >= 0, 1, -1).astype(x.dtype)


# ----------------------------------------------------------------------------------------------
# Declared forward kinds.
# ----------------------------------------------------------------------------------------------

def sign_like(kind: str = SIGN):
  """Decorator declaring a quantizer's forward: sets `precision = 1` and `forward_kind` on it.

  kind "sign": the quantizer returns sign(x) (+1 where x >= 0, else -1, in x's dtype).
  "scaled_sign": it returns c * sign(x), c >= 0 per output channel (the last axis), e.g. XNOR-Net's
  alpha. The declaration is a promise about the forward values only; the gradient is free. Layers
  run declared quantizers on the packed kernels (see `xnorjax.nn.functional.packable`), so a wrong
  declaration gives wrong outputs.

  Example:
    @quantizers.sign_like()
    def narrow_ste_sign(x):
      return quantizers.ste_sign(x, clip_value=0.5)
  """
  if kind not in FORWARD_KINDS:
    raise ValueError(f"kind must be one of {FORWARD_KINDS}, got {kind!r}")

  def declare(quantizer):
    if not callable(quantizer):
      raise TypeError(f"sign_like decorates a callable quantizer, got {type(quantizer).__name__}")
    quantizer.precision = 1
    quantizer.forward_kind = kind
    return quantizer

  return declare


def forward_kind(quantizer) -> Optional[str]:
  """The declared forward kind of a quantizer ("sign", "scaled_sign"), or None (undeclared, or no
  quantizer). `functools.partial` wrappers are looked through."""
  while isinstance(quantizer, functools.partial) and not hasattr(quantizer, "forward_kind"):
    quantizer = quantizer.func
  kind = getattr(quantizer, "forward_kind", None)
  return kind if kind in FORWARD_KINDS and getattr(quantizer, "precision", None) == 1 else None


def is_sign(quantizer) -> bool:
  """True for a quantizer declared to return exactly sign(x) (ste_sign, approx_sign, ...)."""
  return forward_kind(quantizer) == SIGN


def is_scaled_sign(quantizer) -> bool:
  """True for a quantizer declared to return c * sign(x) per output channel (magnitude_aware_sign)."""
  return forward_kind(quantizer) == SCALED_SIGN


# ----------------------------------------------------------------------------------------------
# ste_sign and approx_sign: sign forward, surrogate gradient backward.
# ----------------------------------------------------------------------------------------------

@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _ste_sign(x, clip_value):
  return _sign(x)


def _ste_sign_fwd(x, clip_value):
  return _sign(x), x


def _ste_sign_bwd(clip_value, x, g):
  return (jnp.where(jnp.abs(x) <= clip_value, g, jnp.zeros_like(g)),)


_ste_sign.defvjp(_ste_sign_fwd, _ste_sign_bwd)


@sign_like(SIGN)
def ste_sign(x, clip_value: float = 1.0) -> jax.Array:
  """Sign with the straight-through estimator (BNN, XNOR-Net inputs).

  Forward: +1 where x >= 0, else -1 (sign(0) = +1; NaN compares false, so sign(NaN) = -1, as
  `xnorjax.ops.pack_bits` packs it; +-inf give +-1). Backward: g * 1{|x| <= clip_value}, the
  gradient of hard_tanh for clip_value = 1. Output dtype = input dtype.
  """
  return _ste_sign(_check_float(x, "x"), check_clip_value(clip_value))


@jax.custom_vjp
def _approx_sign(x):
  return _sign(x)


def _approx_sign_fwd(x):
  return _sign(x), x


def _approx_sign_bwd(x, g):
  abs_x = jnp.abs(x)
  return (jnp.where(abs_x < 1, g * (2 - 2 * abs_x), jnp.zeros_like(g)),)


_approx_sign.defvjp(_approx_sign_fwd, _approx_sign_bwd)


@sign_like(SIGN)
def approx_sign(x) -> jax.Array:
  """Sign with Bi-Real Net's piecewise-polynomial gradient.

  Forward identical to `ste_sign`. Backward: g * (2 - 2|x|) for |x| < 1, else 0: the derivative of
  the piecewise quadratic 2x - x|x| (clipped to +-1), closer to sign than hard_tanh.
  """
  return _approx_sign(_check_float(x, "x"))


# ----------------------------------------------------------------------------------------------
# magnitude_aware_sign: XNOR-Net's weight binarization alpha * sign(w).
# ----------------------------------------------------------------------------------------------

def _channel_axes(w: jax.Array) -> tuple[int, ...]:
  return tuple(range(w.ndim - 1))


def _alpha_float32(w: jax.Array) -> jax.Array:
  """alpha = mean |w| over all axes but the last (per output channel), float32, keepdims."""
  return jnp.mean(jnp.abs(w.astype(jnp.float32)), axis=_channel_axes(w), keepdims=True)


def _magnitude_aware_sign_exact(w, clip_value):
  # Plain autodiff through alpha. JAX's d|w|/dw at w = 0 is +1, the forward's sign(0) = +1.
  # One cast to float32, so both gradient paths are summed in float32 and rounded once.
  w32 = w.astype(jnp.float32)
  return (_alpha_float32(w32) * _ste_sign(w32, clip_value)).astype(w.dtype)


def _magnitude_aware_sign_stop_alpha(w, clip_value):
  w32 = w.astype(jnp.float32)
  return (lax.stop_gradient(_alpha_float32(w32)) * _ste_sign(w32, clip_value)).astype(w.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _magnitude_aware_sign_paper(w, clip_value):
  return (_alpha_float32(w) * _sign(w).astype(jnp.float32)).astype(w.dtype)


def _magnitude_aware_sign_paper_fwd(w, clip_value):
  alpha = _alpha_float32(w)
  return (alpha * _sign(w).astype(jnp.float32)).astype(w.dtype), (w, alpha)


def _magnitude_aware_sign_paper_bwd(clip_value, residuals, g):
  w, alpha = residuals
  fan_in = np.prod(w.shape[:-1])
  ste = (jnp.abs(w) <= clip_value).astype(jnp.float32)
  return ((g.astype(jnp.float32) * (1.0 / fan_in + alpha * ste)).astype(w.dtype),)


_magnitude_aware_sign_paper.defvjp(_magnitude_aware_sign_paper_fwd, _magnitude_aware_sign_paper_bwd)

_MAGNITUDE_AWARE_IMPLEMENTATIONS = {
    "exact": _magnitude_aware_sign_exact,
    "paper": _magnitude_aware_sign_paper,
    "stop_alpha": _magnitude_aware_sign_stop_alpha,
}


@sign_like(SCALED_SIGN)
def magnitude_aware_sign(w, gradient: str = "exact", clip_value: float = 1.0) -> jax.Array:
  """XNOR-Net's binary weights alpha * sign(w), alpha = mean |w| per output channel.

  The output channel is the last axis (Flax HWIO conv kernels, IO dense kernels); alpha averages
  over the n = fan-in entries of all other axes. alpha is computed in float32 and the result cast to
  w's dtype, so bfloat16 weights get a float32-accurate alpha rounded once. A NaN in w makes its
  channel's alpha, hence that whole output channel, NaN (other channels are unaffected).

  Gradients (per output channel, g = dC/dWb the gradient reaching Wb = alpha * sign(W), STE the
  indicator 1{|W_i| <= clip_value}):
    "exact":      dC/dW_i = alpha * STE_i * g_i + sign(W_i) * (1/n) * sum_j sign(W_j) g_j.
                  The chain rule through alpha = (1/n) sum_j |W_j| with sign's straight-through
                  estimate: dWb_j/dW_i = alpha STE_i delta_ij + sign(W_j) sign(W_i) / n.
    "paper":      dC/dW_i = g_i * (1/n + alpha * STE_i), as printed in the XNOR-Net paper (Rastegari
                  et al. 2016): it keeps only the diagonal j = i of the alpha term,
                  sign(W_i)^2 g_i / n = g_i / n, and drops the coupling between weights of a channel.
    "stop_alpha": dC/dW_i = alpha * STE_i * g_i: alpha treated as a constant (larq's
                  `magnitude_aware_sign`, and most reimplementations).

  Why no extra factors: the popular PyTorch XNOR-Net code (jiecaoyu/XNOR-Net-PyTorch,
  `updateBinaryGradWeight`) computes exactly the "exact" gradient above and then multiplies it by
  (1 - 1/c_in) * n (c_in = the kernel's input channels), and copies of it by 1e9 more; a
  commented-out line there applies the "paper" rule with the same factor. Neither factor is part of
  the derivative (the "exact" line is the whole chain rule; the mean over n entries contributes
  1/n, never n).
  A constant per-tensor factor is a per-layer learning-rate change: with Adam, which that code
  uses, it cancels in m / sqrt(v) except against eps and against L2 weight decay, which PyTorch's
  Adam adds to the gradient after that scaling, so the practical effect of x n (1 - 1/c) and of
  x 1e9 is to weaken or switch off weight decay on the binary weights. We keep gradients exact and
  express such choices explicitly in the optimizer (per-group learning rate and weight decay with
  `optax.partition`, latent weights clipped with `clip_latent_weights`).

  Args:
    w: float kernel of rank >= 2, output channels last.
    gradient: "exact", "paper" or "stop_alpha" (see above).
    clip_value: the straight-through window |W| <= clip_value.

  Returns:
    alpha * sign(w) (sign(0) = +1), same shape and dtype as w.
  """
  w = _check_float(w, "w")
  if w.ndim < 2:
    raise ValueError(f"w must have rank >= 2 (fan-in axes, then output channels last), got shape {w.shape}")
  if gradient not in _MAGNITUDE_AWARE_IMPLEMENTATIONS:
    raise ValueError(f"gradient must be one of {MAGNITUDE_AWARE_GRADIENTS}, got {gradient!r}")
  return _MAGNITUDE_AWARE_IMPLEMENTATIONS[gradient](w, check_clip_value(clip_value))


# ----------------------------------------------------------------------------------------------
# Resolution by name.
# ----------------------------------------------------------------------------------------------

_REGISTRY: dict[str, Quantizer] = {
    "ste_sign": ste_sign,
    "approx_sign": approx_sign,
    "magnitude_aware_sign": magnitude_aware_sign,
    "magnitude_aware_sign_exact": functools.partial(magnitude_aware_sign, gradient="exact"),
    "magnitude_aware_sign_paper": functools.partial(magnitude_aware_sign, gradient="paper"),
    "magnitude_aware_sign_stop_alpha": functools.partial(magnitude_aware_sign, gradient="stop_alpha"),
}

QUANTIZER_NAMES = tuple(_REGISTRY)


def get(identifier: Union[str, Quantizer, None], *, argument: str = "identifier") -> Optional[Quantizer]:
  """Resolves a quantizer: a name in `QUANTIZER_NAMES`, a callable (returned as is), or None (float).

  Args:
    identifier: the quantizer spec.
    argument: the caller's argument name, used in error messages (e.g. "kernel_quantizer").

  Raises:
    ValueError: unknown name (the message lists the valid names).
    TypeError: anything else that is neither a string, a callable nor None.
  """
  if identifier is None or callable(identifier):
    return identifier
  if isinstance(identifier, str):
    if identifier not in _REGISTRY:
      raise ValueError(f"{argument}={identifier!r} is not a known quantizer; valid names: "
                       f"{', '.join(QUANTIZER_NAMES)} (or a callable, or None for float)")
    return _REGISTRY[identifier]
  raise TypeError(f"{argument} must be a quantizer name, a callable or None, got {type(identifier).__name__}")
