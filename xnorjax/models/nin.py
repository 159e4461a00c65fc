"""Network-in-Network for CIFAR, as in the XNOR-Net CIFAR port (jiecaoyu/XNOR-Net-PyTorch, models/nin.py).

bin_nin:
  conv 5x5 3->192 (float) -> BatchNorm -> ReLU
  block 1x1 192->160, block 1x1 160->96, max-pool 3x3/2 (pad 1)
  block 5x5 96->192 (dropout 0.5), block 1x1 192->192, block 1x1 192->192, avg-pool 3x3/2 (pad 1)
  block 3x3 192->192 (dropout 0.5), block 1x1 192->192
  BatchNorm -> conv 1x1 192->classes (float) -> ReLU -> global average pool (8x8)
where a block is BatchNorm -> sign -> [dropout] -> alpha * sign(W) conv (with bias) -> ReLU. The reference
BatchNorms use eps 1e-4; the first and last are not affine.

nin is the same network with float blocks (BatchNorm -> [dropout] -> conv -> ReLU), so that the two
differ only in the quantizers.
"""

from __future__ import annotations

import jax
from flax import nnx

from xnorjax import nn as xnn
from xnorjax import quantizers
from xnorjax.models import layers
from xnorjax.nn import blocks
from xnorjax.nn import inference

NIN_EPSILON = 1e-4  # the reference NIN's BatchNorms (the zoo's others: PyTorch's 1e-5)
# (kernel, out channels, dropout) of each block; "max"/"avg" are the 3x3/2 pools between groups.
NIN_LAYOUT = ((1, 160, 0.0), (1, 96, 0.0), "max",
              (5, 192, 0.5), (1, 192, 0.0), (1, 192, 0.0), "avg",
              (3, 192, 0.5), (1, 192, 0.0))
STEM_CHANNELS = 192
POOLS = {"max": inference.MaxPool, "avg": inference.AvgPool}
POOL = dict(window=(3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


def _nin_bn(features, *, affine=True, dtype, rngs):
  return nnx.BatchNorm(features, momentum=blocks.BATCH_NORM_MOMENTUM, epsilon=NIN_EPSILON,
                       use_bias=affine, use_scale=affine, dtype=dtype, rngs=rngs)


class NinDropoutBlock(nnx.Module):
  """BatchNorm -> sign -> dropout -> conv (binary kernel) -> ReLU; without quantizers, float.

  As in the reference, dropout acts on the binarized activations (a dropped input is 0, the others
  +-1/(1-p) while training), so the sign is applied here and the conv gets an already binarized
  input (its input_quantizer None, its kernel still binarized).
  """

  def __init__(self, in_features, out_features, kernel_size, *, dropout, input_quantizer,
               kernel_quantizer, dtype, rngs):
    self.bn = _nin_bn(in_features, dtype=dtype, rngs=rngs)
    self.input_quantizer = input_quantizer
    self.dropout = nnx.Dropout(dropout, rngs=rngs)
    self.conv = layers.conv(in_features, out_features, kernel_size, kernel_quantizer=kernel_quantizer,
                            use_bias=True, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    x = self.bn(x)
    if self.input_quantizer is not None:
      x = quantizers.get(self.input_quantizer, argument="input_quantizer")(x)
    return jax.nn.relu(self.conv(self.dropout(x)))

  def inference_program(self):
    steps = [self.bn]
    if self.input_quantizer is not None:
      iq = quantizers.get(self.input_quantizer, argument="input_quantizer")
      if not quantizers.is_sign(iq):
        raise ValueError(f"input_quantizer {self.input_quantizer!r} is not a sign")
      steps.append(inference.Sign())
    return steps + [self.conv, inference.Relu()]  # dropout: the identity in evaluation mode


def nin_block(in_features, out_features, kernel_size, *, dropout, input_quantizer, kernel_quantizer,
              dtype, rngs):
  """A NIN block: BatchNorm -> sign -> [dropout] -> conv -> ReLU (float without quantizers)."""
  if dropout:
    return NinDropoutBlock(in_features, out_features, kernel_size, dropout=dropout,
                           input_quantizer=input_quantizer, kernel_quantizer=kernel_quantizer,
                           dtype=dtype, rngs=rngs)
  return xnn.BinaryConvBlock(
      in_features, out_features, kernel_size, input_quantizer=input_quantizer,
      kernel_quantizer=kernel_quantizer, use_bias=True, batch_norm_epsilon=NIN_EPSILON,
      activation=jax.nn.relu,
      kernel_init=nnx.initializers.kaiming_normal(), dtype=dtype, rngs=rngs)


class NIN(nnx.Module):
  """Network-in-Network; binary blocks when quantizers are given."""

  def __init__(self, *, num_classes=10, width=1.0, input_quantizer=None, kernel_quantizer=None,
               binarize_first_layer=False, binarize_last_layer=False, dtype=None, rngs):
    dtype = layers.resolve_dtype(dtype)
    binary = input_quantizer is not None or kernel_quantizer is not None
    if not binary and (binarize_first_layer or binarize_last_layer):
      raise ValueError("binarize_first_layer / binarize_last_layer apply to bin_nin only")
    first_q = dict(input_quantizer=input_quantizer, kernel_quantizer=kernel_quantizer) \
        if binarize_first_layer else {}
    last_q = dict(input_quantizer=input_quantizer, kernel_quantizer=kernel_quantizer) \
        if binarize_last_layer else {}
    c = layers.scale_channels(STEM_CHANNELS, width)
    self.stem = layers.conv(3, c, 5, use_bias=True, **first_q, dtype=dtype, rngs=rngs)
    self.stem_bn = _nin_bn(c, affine=False, dtype=dtype, rngs=rngs)
    body = []
    for item in NIN_LAYOUT:
      if isinstance(item, str):
        body.append(item)
        continue
      k, out, dropout = item
      out = layers.scale_channels(out, width)
      body.append(nin_block(c, out, k, dropout=dropout, input_quantizer=input_quantizer,
                           kernel_quantizer=kernel_quantizer, dtype=dtype, rngs=rngs))
      c = out
    self.body = nnx.List(body)
    self.head_bn = _nin_bn(c, affine=False, dtype=dtype, rngs=rngs)
    self.head = layers.conv(c, num_classes, 1, use_bias=True, **last_q, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    x = jax.nn.relu(self.stem_bn(self.stem(x)))
    for layer in self.body:
      if layer == "max":
        x = nnx.max_pool(x, POOL["window"], strides=POOL["strides"], padding=POOL["padding"])
      elif layer == "avg":
        x = nnx.avg_pool(x, POOL["window"], strides=POOL["strides"], padding=POOL["padding"])
      else:
        x = layer(x)
    x = jax.nn.relu(self.head(self.head_bn(x)))
    return x.mean(axis=(1, 2))

  def inference_program(self):
    body = [POOLS[layer](**POOL) if isinstance(layer, str) else layer for layer in self.body]
    return [self.stem, self.stem_bn, inference.Relu(), *body, self.head_bn, self.head,
            inference.Relu(), inference.GlobalAvgPool()]


def nin(*, num_classes: int = 10, width: float = 1.0, dtype=None, rngs: nnx.Rngs) -> NIN:
  """Float Network-in-Network."""
  return NIN(num_classes=num_classes, width=width, dtype=dtype, rngs=rngs)


def bin_nin(*, num_classes: int = 10, width: float = 1.0, input_quantizer: str = "ste_sign",
            kernel_quantizer: str = "magnitude_aware_sign", binarize_first_layer: bool = False,
            binarize_last_layer: bool = False, dtype=None, rngs: nnx.Rngs) -> NIN:
  """XNOR-Net Network-in-Network (float first and last convs unless configured otherwise)."""
  return NIN(num_classes=num_classes, width=width, input_quantizer=input_quantizer,
             kernel_quantizer=kernel_quantizer, binarize_first_layer=binarize_first_layer,
             binarize_last_layer=binarize_last_layer, dtype=dtype, rngs=rngs)
