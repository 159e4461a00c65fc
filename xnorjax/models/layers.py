"""Building blocks shared by the models: every conv is an `xnorjax.nn.BinaryConv` (quantizers None
for float convs), so that all of them run through `xnorjax.ops.conv2d`'s per-shape formulation;
the XNOR blocks are `xnorjax.nn.BinaryConvBlock`s; BatchNorms take its defaults (PyTorch's)."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from xnorjax import nn as xnn
from xnorjax.nn import blocks
from xnorjax.nn import inference


def scale_channels(channels: int, width: float) -> int:
  """Channel count scaled by the width multiplier (at least 1)."""
  if not width > 0:
    raise ValueError(f"width must be positive, got {width}")
  return max(1, int(round(channels * width)))


def resolve_dtype(dtype):
  """None / "float32" / "bfloat16" / a jnp dtype -> a jnp dtype or None (computation dtype)."""
  if dtype is None or dtype == "":
    return None
  try:
    return jnp.dtype(dtype)
  except TypeError as e:
    raise ValueError(f"dtype must be a float dtype name such as 'float32' or 'bfloat16', got {dtype!r}") from e


def batch_norm(features: int, *, dtype=None, rngs: nnx.Rngs) -> nnx.BatchNorm:
  return nnx.BatchNorm(features, momentum=blocks.BATCH_NORM_MOMENTUM,
                       epsilon=blocks.BATCH_NORM_EPSILON, dtype=dtype, rngs=rngs)


def conv(in_features: int, out_features: int, kernel_size: int, *, strides: int = 1,
         padding="SAME", input_quantizer: Optional[str] = None,
         kernel_quantizer: Optional[str] = None, use_bias: bool = False, dtype=None,
         rngs: nnx.Rngs) -> xnn.BinaryConv:
  """A conv; float when both quantizers are None. He-normal init (fan in), as torchvision's VGG."""
  return xnn.BinaryConv(
      in_features, out_features, (kernel_size, kernel_size), strides=strides, padding=padding,
      input_quantizer=input_quantizer, kernel_quantizer=kernel_quantizer, use_bias=use_bias,
      kernel_init=nnx.initializers.kaiming_normal(), dtype=dtype, rngs=rngs)


def dense(in_features: int, out_features: int, *, input_quantizer: Optional[str] = None,
          kernel_quantizer: Optional[str] = None, dtype=None, rngs: nnx.Rngs) -> xnn.BinaryDense:
  """The classifier layer (with bias); float when both quantizers are None."""
  return xnn.BinaryDense(in_features, out_features, input_quantizer=input_quantizer,
                         kernel_quantizer=kernel_quantizer, use_bias=True, dtype=dtype, rngs=rngs)


class ConvBNReLU(nnx.Module):
  """Float conv -> BatchNorm -> ReLU (VGG's layer)."""

  def __init__(self, in_features, out_features, kernel_size=3, *, dtype=None, rngs):
    self.conv = conv(in_features, out_features, kernel_size, dtype=dtype, rngs=rngs)
    self.bn = batch_norm(out_features, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    return jax.nn.relu(self.bn(self.conv(x)))

  def inference_program(self):
    return [self.conv, self.bn, inference.Relu()]


def xnor_conv_block(in_features: int, out_features: int, kernel_size: int = 3, *,
                    input_quantizer="ste_sign", kernel_quantizer="magnitude_aware_sign",
                    dtype=None, rngs: nnx.Rngs) -> xnn.BinaryConvBlock:
  """XNOR-Net VGG block: BatchNorm -> sign -> alpha * sign(W) conv -> BatchNorm -> ReLU.

  The second BatchNorm rescales the conv's output, as in the reference XNOR-Net PyTorch VGG.
  He-normal init (fan in), as `conv`.
  """
  return xnn.BinaryConvBlock(
      in_features, out_features, kernel_size, input_quantizer=input_quantizer,
      kernel_quantizer=kernel_quantizer, output_batch_norm=True, activation=jax.nn.relu,
      kernel_init=nnx.initializers.kaiming_normal(), dtype=dtype, rngs=rngs)


def max_pool(x, size: int = 2):
  """Non-overlapping size x size max-pooling of NHWC maps (H and W divisible by size).

  Written as a reshape and a max over the window axes: the same values as `nnx.max_pool` (a
  reduce_window), but its gradient is an elementwise mask instead of XLA's select-and-scatter,
  which on CPU makes the backward pass 4-20x faster (bin_vgg16 at batch 128: 450 -> 100 ms for the
  first 32x32x64 pool). Where a window has tied maxima the gradient is shared among them (the
  reduce_window gradient picks one); after a ReLU such ties are zeros, whose gradient is 0 anyway.
  """
  n, h, w, c = x.shape
  if h % size or w % size:
    raise ValueError(f"max_pool: map {h}x{w} is not divisible by the window {size}")
  return x.reshape(n, h // size, size, w // size, size, c).max(axis=(2, 4))
