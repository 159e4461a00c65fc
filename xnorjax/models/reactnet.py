"""ReActNet-18 for CIFAR (Liu et al. 2020): the Bi-Real ResNet-18 with ReActNet's activations.

Every binary 3x3 conv is one unit with its own real-valued shortcut (Bi-Real Net, Liu et al. 2018):

  out = RPReLU(BN(binary_conv(RSign(x))) + shortcut(x))

RSign (a learnable threshold per channel before the sign) binarizes the conv's input, and RPReLU
(a PReLU with learnable shifts before and after) is the unit's activation, as ReActNet's
ResNet-based blocks. The conv takes the +-1 output of RSign with its own "ste_sign" input quantizer
(the identity there), so it runs on the packed XNOR-popcount kernels where those apply; its kernels
are alpha * sign(W) by default. Downsampling shortcuts are real: 2x2 average pool -> float 1x1
conv -> BN (`xnorjax.models.resnet.Shortcut`). The 3x3 stem conv, its BN and the classifier stay
float; the stem's output has no activation (the shortcuts carry it, as in Bi-Real).

kernel_quantizer=None gives stage 1 of two-stage training (binary activations, float weights).
"""

from __future__ import annotations

from typing import Optional

from flax import nnx

from xnorjax.models import layers
from xnorjax.models import resnet
from xnorjax.nn import react


class ReActUnit(nnx.Module):
  """RPReLU(BN(binary_conv(RSign(x))) + shortcut(x))."""

  def __init__(self, in_features, out_features, stride, *, input_quantizer, kernel_quantizer,
               dtype, rngs):
    self.rsign = react.RSign(in_features, quantizer=input_quantizer, rngs=rngs)
    self.conv = layers.conv(in_features, out_features, 3, strides=stride,
                            input_quantizer="ste_sign", kernel_quantizer=kernel_quantizer,
                            dtype=dtype, rngs=rngs)
    self.bn = layers.batch_norm(out_features, dtype=dtype, rngs=rngs)
    self.shortcut = resnet.Shortcut(in_features, out_features, stride, pool=True, dtype=dtype,
                                    rngs=rngs)
    self.activation = react.RPReLU(out_features, rngs=rngs)

  def __call__(self, x):
    return self.activation(self.bn(self.conv(self.rsign(x))) + self.shortcut(x))


class ReActNet18(nnx.Module):
  """CIFAR ReActNet-18: stem, four stages of two blocks of two ReAct units, global pool, dense."""

  def __init__(self, *, num_classes=10, width=1.0, input_quantizer="approx_sign",
               kernel_quantizer: Optional[str] = "magnitude_aware_sign", dtype=None, rngs):
    dtype = layers.resolve_dtype(dtype)
    q = dict(input_quantizer=input_quantizer, kernel_quantizer=kernel_quantizer)
    c = layers.scale_channels(resnet.STEM_CHANNELS, width)
    self.stem = layers.conv(3, c, 3, dtype=dtype, rngs=rngs)
    self.stem_bn = layers.batch_norm(c, dtype=dtype, rngs=rngs)
    units = []
    for channels, stride in resnet.STAGES:
      out = layers.scale_channels(channels, width)
      for b in range(2 * resnet.BLOCKS_PER_STAGE):
        units.append(ReActUnit(c, out, stride if b == 0 else 1, **q, dtype=dtype, rngs=rngs))
        c = out
    self.units = nnx.List(units)
    self.classifier = layers.dense(c, num_classes, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    x = self.stem_bn(self.stem(x))
    for unit in self.units:
      x = unit(x)
    return self.classifier(x.mean(axis=(1, 2)))


def bin_reactnet18(*, num_classes: int = 10, width: float = 1.0,
                   input_quantizer: str = "approx_sign",
                   kernel_quantizer: Optional[str] = "magnitude_aware_sign", dtype=None,
                   rngs: nnx.Rngs) -> ReActNet18:
  """ReActNet-18 (RSign / RPReLU Bi-Real units). input_quantizer is RSign's ("approx_sign", Bi-Real's
  gradient as ReActNet's code, or "ste_sign"); kernel_quantizer None keeps float weights."""
  return ReActNet18(num_classes=num_classes, width=width, input_quantizer=input_quantizer,
                    kernel_quantizer=kernel_quantizer, dtype=dtype, rngs=rngs)
