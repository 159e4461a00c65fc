"""BinaryConv and BinaryDense: Flax NNX layers with input and kernel quantizers.

Constructor and parameter names follow `nnx.Conv` / `nnx.Linear` (latent weights in `kernel`, HWIO
or IO; `bias`), so that a model swaps them in. One class covers the usual binary networks:
  XNOR-Net: input_quantizer="ste_sign", kernel_quantizer="magnitude_aware_sign"  (the default)
  BWN:      input_quantizer=None,       kernel_quantizer="magnitude_aware_sign"
  BNN:      input_quantizer="ste_sign", kernel_quantizer="ste_sign"  (no alpha)
  float:    both None, passed explicitly (a plain conv through `xnorjax.ops.conv2d`'s per-shape
            formulation).
The math lives in `xnorjax.nn.functional`; these classes hold the parameters and options.
"""

from __future__ import annotations

import types
from typing import Any, Mapping

from flax import nnx
import jax
import jax.numpy as jnp

from xnorjax import quantizers
from xnorjax.nn import functional
from xnorjax.ops import conv as conv_lib

default_kernel_init = nnx.initializers.lecun_normal()  # nnx.Conv's and nnx.Linear's default.
default_bias_init = nnx.initializers.zeros_init()
_EMPTY = types.MappingProxyType({})


def _check_features(value, name: str) -> int:
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"{name} must be a positive int, got {value!r}")
  return value


class BinaryConv(nnx.Module):
  """2-D convolution (NHWC inputs, HWIO `kernel`) with optional input and kernel binarization.

  Binarizes by default, as XNOR-Net ("ste_sign" inputs, "magnitude_aware_sign" kernel); a float
  conv passes input_quantizer=None, kernel_quantizer=None.

  Padding: `padding` ("SAME", "VALID", an int, or ((top, bottom), (left, right))) is applied to the
  (binarized) input explicitly with `pad_value`, then the conv runs VALID. With pad_value=0 (the
  default, as in float training) a binarized input sees {-1, 0, +1} at the border, which one bit
  cannot store; the packed kernels reproduce it exactly with a per-border-position correction.
  pad_value=-1 or +1 keeps the padded input binary. Choose at training time and keep it: the
  reference PyTorch XNOR-Net trains with 0 and infers with -1, silently changing its own model.

  activation_scaling=True adds XNOR-Net's K (the paper's full form): the output is
  (sign(I) conv alpha sign(W)) * K, K = mean_c |I| convolved with the box filter 1/(kh*kw) at the
  layer's strides and padding (see `functional.activation_scale`).

  `implementation`: how the binarized product runs (see `xnorjax.ops.implementations`): "float"
  (float conv), "packed" (XNOR-popcount kernels forward, the float conv's gradient backward), or
  "auto" (default: "packed" on the CPU backend, in training and inference, when the quantizers
  are sign-like and the extension is built; "float" otherwise). `formulation` is passed to
  `xnorjax.ops.conv2d` ("auto" chooses per shape and may pick "lax_im2col" or "lax_padded",
  custom_vjps: use "lax" or "im2col" if you need forward-mode AD).

  Unlike `nnx.Conv`, an int kernel_size means a square kernel (this layer is 2-D only).
  """

  def __init__(self, in_features: int, out_features: int, kernel_size, *, strides=1,
               padding="SAME", input_quantizer="ste_sign", kernel_quantizer="magnitude_aware_sign",
               pad_value: float = 0.0,
               activation_scaling: bool = False, use_bias: bool = False,
               kernel_init=default_kernel_init, bias_init=default_bias_init, dtype=None,
               param_dtype=jnp.float32, implementation: str = "auto", formulation: str = "auto",
               preferred_element_type=None, kernel_metadata: Mapping[str, Any] = _EMPTY,
               bias_metadata: Mapping[str, Any] = _EMPTY, rngs: nnx.Rngs):
    self.in_features = _check_features(in_features, "in_features")
    self.out_features = _check_features(out_features, "out_features")
    self.kernel_size = conv_lib.normalize_pair(kernel_size, "kernel_size")
    self.strides = conv_lib.normalize_pair(strides, "strides")
    # Validates the spec now (the real pads depend on the input size for "SAME").
    conv_lib.normalize_padding(padding, self.kernel_size, self.kernel_size, self.strides)
    self.padding = padding if isinstance(padding, (str, int)) else tuple(map(tuple, padding))
    self.input_quantizer = quantizers.get(input_quantizer, argument="input_quantizer")
    self.kernel_quantizer = quantizers.get(kernel_quantizer, argument="kernel_quantizer")
    self.pad_value = functional.check_pad_value(pad_value, self.input_quantizer is not None)
    if activation_scaling and self.input_quantizer is None:
      raise ValueError("activation_scaling=True needs an input_quantizer (K rescales binarized inputs)")
    self.activation_scaling = bool(activation_scaling)
    functional.resolve_implementation(implementation, self.input_quantizer,
                                      self.kernel_quantizer)  # validates
    self.implementation = implementation  # resolved per call ("auto" depends on the backend)
    if formulation not in conv_lib.FORMULATIONS:
      raise ValueError(f"formulation must be one of {conv_lib.FORMULATIONS}, got {formulation!r}")
    self.formulation = formulation
    self.use_bias = use_bias
    self.dtype = dtype
    self.param_dtype = param_dtype
    self.preferred_element_type = preferred_element_type
    kernel_shape = self.kernel_size + (self.in_features, self.out_features)
    self.kernel = nnx.Param(kernel_init(rngs.params(), kernel_shape, param_dtype), **kernel_metadata)
    self.bias = (nnx.Param(bias_init(rngs.params(), (self.out_features,), param_dtype), **bias_metadata)
                 if use_bias else None)

  def __call__(self, inputs: jax.Array) -> jax.Array:
    return functional.binary_conv2d(
        inputs, self.kernel[...], None if self.bias is None else self.bias[...],
        strides=self.strides, padding=self.padding, input_quantizer=self.input_quantizer,
        kernel_quantizer=self.kernel_quantizer, pad_value=self.pad_value,
        activation_scaling=self.activation_scaling, dtype=self.dtype,
        implementation=self.implementation, formulation=self.formulation,
        preferred_element_type=self.preferred_element_type)


class BinaryDense(nnx.Module):
  """Dense layer (inputs (..., in_features), IO `kernel`) with optional input and kernel binarization.

  Binarizes by default, as BinaryConv (XNOR-Net); a float layer passes both quantizers as None.
  """

  def __init__(self, in_features: int, out_features: int, *, input_quantizer="ste_sign",
               kernel_quantizer="magnitude_aware_sign", use_bias: bool = False,
               kernel_init=default_kernel_init, bias_init=default_bias_init, dtype=None,
               param_dtype=jnp.float32, implementation: str = "auto", preferred_element_type=None,
               kernel_metadata: Mapping[str, Any] = _EMPTY,
               bias_metadata: Mapping[str, Any] = _EMPTY, rngs: nnx.Rngs):
    self.in_features = _check_features(in_features, "in_features")
    self.out_features = _check_features(out_features, "out_features")
    self.input_quantizer = quantizers.get(input_quantizer, argument="input_quantizer")
    self.kernel_quantizer = quantizers.get(kernel_quantizer, argument="kernel_quantizer")
    functional.resolve_implementation(implementation, self.input_quantizer,
                                      self.kernel_quantizer)  # validates
    self.implementation = implementation  # resolved per call ("auto" depends on the backend)
    self.use_bias = use_bias
    self.dtype = dtype
    self.param_dtype = param_dtype
    self.preferred_element_type = preferred_element_type
    self.kernel = nnx.Param(kernel_init(rngs.params(), (self.in_features, self.out_features), param_dtype),
                            **kernel_metadata)
    self.bias = (nnx.Param(bias_init(rngs.params(), (self.out_features,), param_dtype), **bias_metadata)
                 if use_bias else None)

  def __call__(self, inputs: jax.Array) -> jax.Array:
    return functional.binary_dense(
        inputs, self.kernel[...], None if self.bias is None else self.bias[...],
        input_quantizer=self.input_quantizer, kernel_quantizer=self.kernel_quantizer,
        dtype=self.dtype, implementation=self.implementation,
        preferred_element_type=self.preferred_element_type)
