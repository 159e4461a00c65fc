"""The math of the binary layers as pure functions (the layers in binary_layers.py only hold params).

Order of a binarized conv (XNOR-Net, Rastegari et al. 2016):
  K  = box_filter(mean_c |I|)                          (optional activation scaling, zero padding)
  Ib = input_quantizer(I), Wb = kernel_quantizer(W)    (e.g. sign(I), alpha * sign(W))
  O  = conv(pad(Ib, pad_value), Wb) * K (+ bias)

The seam for packed kernels: `conv_binarized` / `dense_binarized` compute the product of already
binarized operands and dispatch on `forward`; today only "xla" (float conv / dot on the +-1 and
alpha values) exists. A packed XNOR-popcount forward registers another name there and must
reproduce "xla" exactly for the same pad_value.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from xnorjax import quantizers
from xnorjax.ops import conv as conv_lib

FORWARDS = ("xla",)
BINARY_PAD_VALUES = (0.0, -1.0, 1.0)


def check_forward(forward: str) -> str:
  if forward not in FORWARDS:
    raise ValueError(f"forward must be one of {FORWARDS} (packed kernels are not wired in yet), "
                     f"got {forward!r}")
  return forward


def check_pad_value(pad_value, input_binarized: bool) -> float:
  """pad_value as a float; with a binarized input it must be 0, -1 or +1.

  With zero padding a binarized input sees {-1, 0, +1} at the border, which one bit per value
  cannot store; -1 or +1 padding keeps the padded input binary, so a packed kernel reproduces it.
  0 is the default because it is what float training does (and what XNOR-Net trained with).
  """
  if isinstance(pad_value, bool) or not isinstance(pad_value, (int, float, np.integer, np.floating)):
    raise TypeError(f"pad_value must be a Python number, got {type(pad_value).__name__}")
  pad_value = float(pad_value)
  if not np.isfinite(pad_value):
    raise ValueError(f"pad_value must be finite, got {pad_value}")
  if input_binarized and pad_value not in BINARY_PAD_VALUES:
    raise ValueError(f"pad_value must be 0, -1 or +1 when the input is binarized, got {pad_value}")
  return pad_value


def _check_float_input(x, name: str, rank: Optional[int] = None) -> jax.Array:
  x = jnp.asarray(x)
  if rank is not None and x.ndim != rank:
    raise ValueError(f"{name} must have rank {rank} (NHWC), got shape {x.shape}")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"{name} must be a floating-point array, got dtype {x.dtype}")
  return x


def activation_scale(x: jax.Array, kernel_size, *, strides=1, padding="SAME",
                     formulation: str = "auto") -> jax.Array:
  """XNOR-Net's K: mean over channels of |x|, averaged over each kernel window. (N, Ho, Wo, 1).

  K = A conv k with A = mean_c |x| and k the (kh, kw) box filter 1/(kh*kw), at the layer's strides
  and padding, A zero-padded (positions outside the input contribute no magnitude).
  """
  kh, kw = conv_lib.normalize_pair(kernel_size, "kernel_size")
  magnitude = jnp.mean(jnp.abs(x), axis=-1, keepdims=True)
  box = jnp.full((kh, kw, 1, 1), 1.0 / (kh * kw), magnitude.dtype)
  return conv_lib.conv2d(magnitude, box, strides=strides, padding=padding, pad_value=0.0,
                         formulation=formulation)


def conv_binarized(xb: jax.Array, wb: jax.Array, *, strides=1, padding="SAME", pad_value=0.0,
                   forward: str = "xla", formulation: str = "auto",
                   preferred_element_type=None) -> jax.Array:
  """Convolution of already-quantized operands: the seam where packed kernels plug in."""
  check_forward(forward)
  return conv_lib.conv2d(xb, wb, strides=strides, padding=padding, pad_value=pad_value,
                         formulation=formulation, preferred_element_type=preferred_element_type)


def dense_binarized(xb: jax.Array, wb: jax.Array, *, forward: str = "xla",
                    preferred_element_type=None) -> jax.Array:
  """Matrix product of already-quantized operands (..., I) x (I, O): the dense seam."""
  check_forward(forward)
  return jnp.dot(xb, wb, preferred_element_type=preferred_element_type)


def _promote(arrays, dtype):
  if dtype is None:
    dtype = jnp.result_type(*[a for a in arrays if a is not None])
  return [None if a is None else jnp.asarray(a, dtype) for a in arrays]


def binary_conv2d(inputs, kernel, bias=None, *, strides=1, padding="SAME", input_quantizer=None,
                  kernel_quantizer=None, pad_value: float = 0.0, activation_scaling: bool = False,
                  dtype=None, forward: str = "xla", formulation: str = "auto",
                  preferred_element_type=None) -> jax.Array:
  """A (binarized) conv layer's forward pass: NHWC inputs, HWIO kernel, optional bias (O,).

  Quantizers are names, callables or None (see `xnorjax.quantizers.get`); with both None this is a
  plain float conv through `xnorjax.ops.conv2d`. `dtype` is the computation dtype (default: the
  promoted dtype of inputs, kernel and bias), as in `nnx.Conv`.
  """
  input_quantizer = quantizers.get(input_quantizer, argument="input_quantizer")
  kernel_quantizer = quantizers.get(kernel_quantizer, argument="kernel_quantizer")
  inputs = _check_float_input(inputs, "inputs", rank=4)
  kernel = _check_float_input(kernel, "kernel", rank=4)
  if inputs.shape[-1] != kernel.shape[2]:
    raise ValueError(f"inputs have {inputs.shape[-1]} channels but the kernel expects "
                     f"in_features={kernel.shape[2]} (inputs shape {inputs.shape}, NHWC)")
  pad_value = check_pad_value(pad_value, input_quantizer is not None)
  if activation_scaling and input_quantizer is None:
    raise ValueError("activation_scaling=True needs an input_quantizer (K rescales binarized inputs)")
  inputs, kernel, bias = _promote([inputs, kernel, bias], dtype)
  scale = None
  if activation_scaling:
    scale = activation_scale(inputs, kernel.shape[:2], strides=strides, padding=padding,
                             formulation=formulation)
  xb = inputs if input_quantizer is None else input_quantizer(inputs)
  wb = kernel if kernel_quantizer is None else kernel_quantizer(kernel)
  y = conv_binarized(xb, wb, strides=strides, padding=padding, pad_value=pad_value, forward=forward,
                     formulation=formulation, preferred_element_type=preferred_element_type)
  if scale is not None:
    y = y * scale.astype(y.dtype)
  if bias is not None:
    y = y + bias.astype(y.dtype)
  return y


def binary_dense(inputs, kernel, bias=None, *, input_quantizer=None, kernel_quantizer=None,
                 dtype=None, forward: str = "xla", preferred_element_type=None) -> jax.Array:
  """A (binarized) dense layer's forward pass: inputs (..., I), kernel (I, O), optional bias (O,)."""
  input_quantizer = quantizers.get(input_quantizer, argument="input_quantizer")
  kernel_quantizer = quantizers.get(kernel_quantizer, argument="kernel_quantizer")
  inputs = _check_float_input(inputs, "inputs")
  kernel = _check_float_input(kernel, "kernel", rank=2)
  if inputs.ndim < 1 or inputs.shape[-1] != kernel.shape[0]:
    raise ValueError(f"inputs must end in in_features={kernel.shape[0]} features, got shape {inputs.shape}")
  inputs, kernel, bias = _promote([inputs, kernel, bias], dtype)
  xb = inputs if input_quantizer is None else input_quantizer(inputs)
  wb = kernel if kernel_quantizer is None else kernel_quantizer(kernel)
  y = dense_binarized(xb, wb, forward=forward, preferred_element_type=preferred_element_type)
  if bias is not None:
    y = y + bias.astype(y.dtype)
  return y
