"""The math of the binary layers as pure functions (the layers in binary_layers.py only hold params).

Order of a binarized conv (XNOR-Net, Rastegari et al. 2016):
  K  = box_filter(mean_c |I|)                          (optional activation scaling, zero padding)
  Ib = input_quantizer(I), Wb = kernel_quantizer(W)    (e.g. sign(I), alpha * sign(W))
  O  = conv(pad(Ib, pad_value), Wb) * K (+ bias)

`conv_binarized` / `dense_binarized` compute the product of already binarized operands by
`implementation` "float" or "packed"; the layer functions also take "auto", resolved by
`resolve_implementation` (the values are defined in `xnorjax.ops.implementations`). "packed" and
"float" agree within float32 rounding (the kernel's integer dot is exact; "float" sums +-alpha in
floating point), for every pad_value.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from xnorjax import _native
from xnorjax import quantizers
from xnorjax.ops import conv as conv_lib
from xnorjax.ops import implementations
from xnorjax.ops import xnor as xnor_lib

IMPLEMENTATIONS = implementations.LAYER_IMPLEMENTATIONS
BINARY_PAD_VALUES = (0.0, -1.0, 1.0)


def check_implementation(implementation: str) -> str:
  return implementations.check_choice(implementation, IMPLEMENTATIONS, "implementation")


def packable(input_quantizer, kernel_quantizer) -> bool:
  """True when the packed kernels reproduce this layer: its quantizers are declared (see
  `xnorjax.quantizers.sign_like`) sign(x) for the input and sign(W) or c_o * sign(W) for the kernel."""
  return (quantizers.is_sign(input_quantizer)
          and (quantizers.is_sign(kernel_quantizer) or quantizers.is_scaled_sign(kernel_quantizer)))


def resolve_implementation(implementation: str, input_quantizer, kernel_quantizer) -> str:
  """The concrete implementation ("float" or "packed") of a layer's product for its options
  (see `xnorjax.ops.implementations`).

  Raises:
    ValueError: implementation="packed" with quantizers the packed kernels cannot reproduce.
  """
  check_implementation(implementation)
  if implementation == "packed" and not packable(input_quantizer, kernel_quantizer):
    raise ValueError("implementation='packed' needs input_quantizer 'ste_sign' or 'approx_sign' "
                     "and kernel_quantizer 'ste_sign' or 'magnitude_aware_sign' (any gradient "
                     "variant), or quantizers declared by xnorjax.quantizers.sign_like")
  if implementation == "auto":
    use_packed = (packable(input_quantizer, kernel_quantizer) and _native.extension_available()
                  and jax.default_backend() == "cpu")
    return "packed" if use_packed else "float"
  return implementation


def _channel_scale(wb: jax.Array) -> jax.Array:
  """Per-output-channel c_o of a c_o * sign(W) kernel (1 for sign, alpha for magnitude-aware)."""
  return jnp.max(jnp.abs(wb.astype(jnp.float32)), axis=tuple(range(wb.ndim - 1)))


def _packed_with_float_gradient(packed_fn, float_fn, xb, wb):
  """packed_fn(xb, wb) forward; the vjp of float_fn (the same product in floating point) backward."""

  @jax.custom_vjp
  def product(xb, wb):
    return packed_fn(xb, wb)

  def fwd(xb, wb):
    return packed_fn(xb, wb), (xb, wb)

  def bwd(residuals, g):
    _, vjp = jax.vjp(float_fn, *residuals)
    return vjp(g)

  product.defvjp(fwd, bwd)
  return product(xb, wb)


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
                   implementation: str = "float", formulation: str = "auto",
                   preferred_element_type=None) -> jax.Array:
  """Convolution of already-quantized operands, by `implementation` ("float" or "packed").

  For "packed", xb must be +-1 and wb = c_o * sign(W) per output channel (c_o >= 0).
  """
  return _binarized_product(
      "conv_binarized", implementation, xb, wb, preferred_element_type,
      lambda xb, wb: conv_lib.conv2d(xb, wb, strides=strides, padding=padding,
                                     pad_value=pad_value, formulation=formulation,
                                     preferred_element_type=preferred_element_type),
      lambda xb, wb, scale: xnor_lib.xnor_conv(xb, wb, strides=strides, padding=padding,
                                               pad_value=pad_value, scale=scale))


def dense_binarized(xb: jax.Array, wb: jax.Array, *, implementation: str = "float",
                    preferred_element_type=None) -> jax.Array:
  """Matrix product of already-quantized operands (..., I) x (I, O), by `implementation` ("float"
  or "packed")."""
  return _binarized_product(
      "dense_binarized", implementation, xb, wb, preferred_element_type,
      lambda xb, wb: jnp.dot(xb, wb, preferred_element_type=preferred_element_type),
      lambda xb, wb, scale: xnor_lib.xnor_dense(xb, wb, scale=scale))


def _binarized_product(name: str, implementation: str, xb, wb, preferred_element_type,
                       float_product, packed_kernel):
  """float_product(xb, wb) for "float"; for "packed", packed_kernel(xb, wb, c_o) (c_o per output
  channel, fused into the kernel's epilogue) forward and float_product's vjp backward."""
  check_implementation(implementation)
  if implementation == "float":
    return float_product(xb, wb)
  if implementation != "packed":
    raise ValueError(f"{name} needs a concrete implementation ('float' or 'packed'), got "
                     f"{implementation!r}")
  out_dtype = jnp.result_type(xb, wb) if preferred_element_type is None else preferred_element_type

  def packed_product(xb, wb):
    return packed_kernel(xb, wb, _channel_scale(wb)).astype(out_dtype)

  return _packed_with_float_gradient(packed_product, float_product, xb, wb)


def _promote(arrays, dtype):
  if dtype is None:
    dtype = jnp.result_type(*[a for a in arrays if a is not None])
  return [None if a is None else jnp.asarray(a, dtype) for a in arrays]


def binary_conv2d(inputs, kernel, bias=None, *, strides=1, padding="SAME", input_quantizer=None,
                  kernel_quantizer=None, pad_value: float = 0.0, activation_scaling: bool = False,
                  dtype=None, implementation: str = "auto", formulation: str = "auto",
                  preferred_element_type=None) -> jax.Array:
  """A (binarized) conv layer's forward pass: NHWC inputs, HWIO kernel, optional bias (O,).

  Quantizers are names, callables or None (see `xnorjax.quantizers.get`); with both None this is a
  plain float conv through `xnorjax.ops.conv2d`. `dtype` is the computation dtype (default: the
  promoted dtype of inputs, kernel and bias), as in `nnx.Conv`. `implementation` chooses how the
  product runs (`resolve_implementation`).
  """
  input_quantizer = quantizers.get(input_quantizer, argument="input_quantizer")
  kernel_quantizer = quantizers.get(kernel_quantizer, argument="kernel_quantizer")
  implementation = resolve_implementation(implementation, input_quantizer, kernel_quantizer)
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
  y = conv_binarized(xb, wb, strides=strides, padding=padding, pad_value=pad_value,
                     implementation=implementation, formulation=formulation, preferred_element_type=preferred_element_type)
  if scale is not None:
    y = y * scale.astype(y.dtype)
  if bias is not None:
    y = y + bias.astype(y.dtype)
  return y


def binary_dense(inputs, kernel, bias=None, *, input_quantizer=None, kernel_quantizer=None,
                 dtype=None, implementation: str = "auto", preferred_element_type=None) -> jax.Array:
  """A (binarized) dense layer's forward pass: inputs (..., I), kernel (I, O), optional bias (O,)."""
  input_quantizer = quantizers.get(input_quantizer, argument="input_quantizer")
  kernel_quantizer = quantizers.get(kernel_quantizer, argument="kernel_quantizer")
  implementation = resolve_implementation(implementation, input_quantizer, kernel_quantizer)
  inputs = _check_float_input(inputs, "inputs")
  kernel = _check_float_input(kernel, "kernel", rank=2)
  if inputs.ndim < 1 or inputs.shape[-1] != kernel.shape[0]:
    raise ValueError(f"inputs must end in in_features={kernel.shape[0]} features, got shape {inputs.shape}")
  inputs, kernel, bias = _promote([inputs, kernel, bias], dtype)
  xb = inputs if input_quantizer is None else input_quantizer(inputs)
  wb = kernel if kernel_quantizer is None else kernel_quantizer(kernel)
  y = dense_binarized(xb, wb, implementation=implementation,
                      preferred_element_type=preferred_element_type)
  if bias is not None:
    y = y + bias.astype(y.dtype)
  return y
