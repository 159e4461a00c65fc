"""A small CNN for smoke tests and quick experiments: `small_cnn` (float) and `bin_small_cnn` (XNOR).

float conv 3->c with BatchNorm and ReLU, 2x2 max-pool; then two 3x3 convs c->2c->4c (XNOR blocks in
the binary model: BatchNorm -> sign -> alpha * sign(W) conv -> BatchNorm -> ReLU), each followed by
a 2x2 max-pool; global average pool; float dense classifier. c = 32 * width. It compiles and trains
in seconds on a CPU, which the training tests rely on.
"""

from __future__ import annotations

from flax import nnx

from xnorjax.models import layers
from xnorjax.nn import inference

CHANNELS = (32, 64, 128)


class SmallCNN(nnx.Module):
  """Stem, two conv stages (XNOR when `binary`), global average pool, dense."""

  def __init__(self, *, binary: bool, num_classes=10, width=1.0, input_quantizer="ste_sign",
               kernel_quantizer="magnitude_aware_sign", dtype=None, rngs):
    dtype = layers.resolve_dtype(dtype)
    c = [layers.scale_channels(ch, width) for ch in CHANNELS]
    self.stem = layers.ConvBNReLU(3, c[0], dtype=dtype, rngs=rngs)
    if binary:
      q = dict(input_quantizer=input_quantizer, kernel_quantizer=kernel_quantizer)
      self.blocks = nnx.List([layers.xnor_conv_block(a, b, **q, dtype=dtype, rngs=rngs)
                              for a, b in zip(c[:-1], c[1:])])
    else:
      self.blocks = nnx.List([layers.ConvBNReLU(a, b, dtype=dtype, rngs=rngs)
                              for a, b in zip(c[:-1], c[1:])])
    self.classifier = layers.dense(c[-1], num_classes, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    x = layers.max_pool(self.stem(x))
    for block in self.blocks:
      x = layers.max_pool(block(x))
    return self.classifier(x.mean(axis=(1, 2)))

  def inference_program(self):
    steps = [self.stem, inference.MaxPool(2)]  # layers.max_pool
    for block in self.blocks:
      steps += [block, inference.MaxPool(2)]
    return steps + [inference.GlobalAvgPool(), self.classifier]


def small_cnn(*, num_classes: int = 10, width: float = 1.0, dtype=None, rngs: nnx.Rngs) -> SmallCNN:
  """Float small CNN."""
  return SmallCNN(binary=False, num_classes=num_classes, width=width, dtype=dtype, rngs=rngs)


def bin_small_cnn(*, num_classes: int = 10, width: float = 1.0, input_quantizer: str = "ste_sign",
                  kernel_quantizer: str = "magnitude_aware_sign", dtype=None,
                  rngs: nnx.Rngs) -> SmallCNN:
  """Small CNN with two XNOR conv blocks (float stem and classifier)."""
  return SmallCNN(binary=True, num_classes=num_classes, width=width, input_quantizer=input_quantizer,
                  kernel_quantizer=kernel_quantizer, dtype=dtype, rngs=rngs)
