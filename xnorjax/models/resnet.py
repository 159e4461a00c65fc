"""ResNet-18 for CIFAR (3x3 stem, no max-pool, stages 64/128/256/512 of two blocks, strides 1/2/2/2).

resnet18: the usual BasicBlock (conv -> BN -> ReLU -> conv -> BN, plus shortcut, ReLU); a 1x1
conv + BN shortcut where the shape changes.

bin_resnet18, Bi-Real Net style (Liu et al., 2018): every binary 3x3 conv has its own real-valued
shortcut, out = BN(binary_conv(sign(x))) + shortcut(x), so the real-valued activations flow past
each sign. Downsampling shortcuts are real: 2x2 average pool -> float 1x1 conv -> BN. Inputs use
Bi-Real's approx_sign, kernels alpha * sign(W). The stem conv and the classifier stay float unless
configured otherwise.
"""

from __future__ import annotations

import jax
from flax import nnx

from xnorjax.models import layers

STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))  # (channels, stride of the first block)
BLOCKS_PER_STAGE = 2
STEM_CHANNELS = 64


class Shortcut(nnx.Module):
  """Identity, or (when the shape changes) [2x2 average pool] -> float 1x1 conv -> BN."""

  def __init__(self, in_features, out_features, stride, *, pool: bool, dtype, rngs):
    self.stride = stride
    self.pool = pool
    if stride == 1 and in_features == out_features:
      self.conv = self.bn = None
    else:
      conv_stride = 1 if pool else stride
      self.conv = layers.conv(in_features, out_features, 1, strides=conv_stride, dtype=dtype, rngs=rngs)
      self.bn = layers.batch_norm(out_features, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    if self.conv is None:
      return x
    if self.pool and self.stride > 1:
      x = nnx.avg_pool(x, (self.stride, self.stride), strides=(self.stride, self.stride))
    return self.bn(self.conv(x))


class BasicBlock(nnx.Module):
  """Float ResNet block: relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))."""

  def __init__(self, in_features, out_features, stride, *, dtype, rngs):
    self.conv1 = layers.conv(in_features, out_features, 3, strides=stride, dtype=dtype, rngs=rngs)
    self.bn1 = layers.batch_norm(out_features, dtype=dtype, rngs=rngs)
    self.conv2 = layers.conv(out_features, out_features, 3, dtype=dtype, rngs=rngs)
    self.bn2 = layers.batch_norm(out_features, dtype=dtype, rngs=rngs)
    self.shortcut = Shortcut(in_features, out_features, stride, pool=False, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    y = jax.nn.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return jax.nn.relu(y + self.shortcut(x))


class BiRealUnit(nnx.Module):
  """One Bi-Real unit: BN(binary_conv(sign(x))) + real-valued shortcut(x)."""

  def __init__(self, in_features, out_features, stride, *, input_quantizer, kernel_quantizer,
               dtype, rngs):
    self.conv = layers.conv(in_features, out_features, 3, strides=stride,
                            input_quantizer=input_quantizer, kernel_quantizer=kernel_quantizer,
                            dtype=dtype, rngs=rngs)
    self.bn = layers.batch_norm(out_features, dtype=dtype, rngs=rngs)
    self.shortcut = Shortcut(in_features, out_features, stride, pool=True, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    return self.bn(self.conv(x)) + self.shortcut(x)


class BiRealBlock(nnx.Module):
  """Two Bi-Real units: the binary counterpart of a BasicBlock."""

  def __init__(self, in_features, out_features, stride, *, input_quantizer, kernel_quantizer,
               dtype, rngs):
    q = dict(input_quantizer=input_quantizer, kernel_quantizer=kernel_quantizer)
    self.unit1 = BiRealUnit(in_features, out_features, stride, **q, dtype=dtype, rngs=rngs)
    self.unit2 = BiRealUnit(out_features, out_features, 1, **q, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    return self.unit2(self.unit1(x))


class ResNet18(nnx.Module):
  """CIFAR ResNet-18; Bi-Real binary blocks when `binary`."""

  def __init__(self, *, binary: bool, num_classes=10, width=1.0, input_quantizer="approx_sign",
               kernel_quantizer="magnitude_aware_sign", binarize_first_layer=False,
               binarize_last_layer=False, dtype=None, rngs):
    dtype = layers.resolve_dtype(dtype)
    if not binary and (binarize_first_layer or binarize_last_layer):
      raise ValueError("binarize_first_layer / binarize_last_layer apply to bin_resnet18 only")
    q = dict(input_quantizer=input_quantizer, kernel_quantizer=kernel_quantizer)
    self.binary = binary
    c = layers.scale_channels(STEM_CHANNELS, width)
    self.stem = layers.conv(3, c, 3, **(q if binarize_first_layer else {}), dtype=dtype, rngs=rngs)
    self.stem_bn = layers.batch_norm(c, dtype=dtype, rngs=rngs)
    blocks = []
    for channels, stride in STAGES:
      out = layers.scale_channels(channels, width)
      for b in range(BLOCKS_PER_STAGE):
        s = stride if b == 0 else 1
        if binary:
          blocks.append(BiRealBlock(c, out, s, **q, dtype=dtype, rngs=rngs))
        else:
          blocks.append(BasicBlock(c, out, s, dtype=dtype, rngs=rngs))
        c = out
    self.blocks = nnx.List(blocks)
    self.classifier = layers.dense(c, num_classes, **(q if binarize_last_layer else {}),
                                   dtype=dtype, rngs=rngs)

  def __call__(self, x):
    x = self.stem_bn(self.stem(x))
    if not self.binary:
      x = jax.nn.relu(x)  # Bi-Real keeps the stem's real-valued output (no ReLU) for the shortcuts.
    for block in self.blocks:
      x = block(x)
    return self.classifier(x.mean(axis=(1, 2)))

  def inference_program(self):
    name = "bin_resnet18" if self.binary else "resnet18"
    reason = (": its real-valued shortcuts keep every activation in float" if self.binary else "")
    raise ValueError(f"{name} has no inference program: each block adds a shortcut branch, which "
                     f"a sequence of steps cannot express{reason}")


def resnet18(*, num_classes: int = 10, width: float = 1.0, dtype=None, rngs: nnx.Rngs) -> ResNet18:
  """Float CIFAR ResNet-18."""
  return ResNet18(binary=False, num_classes=num_classes, width=width, dtype=dtype, rngs=rngs)


def bin_resnet18(*, num_classes: int = 10, width: float = 1.0, input_quantizer: str = "approx_sign",
                 kernel_quantizer: str = "magnitude_aware_sign", binarize_first_layer: bool = False,
                 binarize_last_layer: bool = False, dtype=None, rngs: nnx.Rngs) -> ResNet18:
  """Bi-Real style binary ResNet-18 with real-valued shortcuts."""
  return ResNet18(binary=True, num_classes=num_classes, width=width, input_quantizer=input_quantizer,
                  kernel_quantizer=kernel_quantizer, binarize_first_layer=binarize_first_layer,
                  binarize_last_layer=binarize_last_layer, dtype=dtype, rngs=rngs)
