"""VGG16 for CIFAR (32x32): float `vgg16` and XNOR-Net `bin_vgg16`.

vgg16: the thirteen 3x3 convs of VGG16, each conv -> BatchNorm -> ReLU, 2x2 max-pooling after each
of the five stages, then one float dense layer (512 -> classes).

bin_vgg16, as the reference XNOR-Net PyTorch code: a float first conv 3 -> 64 with BatchNorm and
ReLU, then the thirteen convs of VGG16 as XNOR blocks (BatchNorm -> sign -> alpha * sign(W) conv ->
BatchNorm -> ReLU), max-pooling after each stage, then the float classifier. The layer table
`VGG16_STAGES` below is the one place these shapes live; `bin_vgg16_conv_shapes` derives the list of
binary conv shapes from it (kernel benchmarks use it).
"""

from __future__ import annotations

import dataclasses

from flax import nnx

from xnorjax.models import layers
from xnorjax.nn import inference

# Output channels of the 3x3 convs of each VGG16 stage; a 2x2 max-pool follows every stage.
VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
STEM_CHANNELS = 64  # bin_vgg16's float first conv 3 -> 64.


@dataclasses.dataclass(frozen=True)
class ConvShape:
  """One conv layer: `in_channels` -> `out_channels`, kernel `kernel_size`, on `input_hw` maps
  (stride 1, SAME padding)."""
  name: str
  in_channels: int
  out_channels: int
  kernel_size: tuple[int, int]
  input_hw: tuple[int, int]


def _stage_layout(width: float, in_channels: int):
  """[(stage index, [(in, out), ...])] for the VGG16 convs, starting from `in_channels`."""
  layout = []
  c = in_channels
  for s, outs in enumerate(VGG16_STAGES):
    convs = []
    for out in outs:
      out = layers.scale_channels(out, width)
      convs.append((c, out))
      c = out
    layout.append((s, convs))
  return layout


def bin_vgg16_conv_shapes(image_size: int = 32, width: float = 1.0) -> list[ConvShape]:
  """The thirteen binary conv layers of bin_vgg16 in order (names `stage{s}_conv{i}`, from 1).

  At width 1 and 32x32 input: 64->64 x2 (32x32), 64->128, 128->128 (16x16), 128->256, 256->256 x2
  (8x8), 256->512, 512->512 x2 (4x4), 512->512 x3 (2x2).
  """
  shapes = []
  for s, convs in _stage_layout(width, layers.scale_channels(STEM_CHANNELS, width)):
    hw = image_size // 2 ** s
    for i, (cin, cout) in enumerate(convs):
      shapes.append(ConvShape(f"stage{s + 1}_conv{i + 1}", cin, cout, (3, 3), (hw, hw)))
  return shapes


class VGG16(nnx.Module):
  """VGG16 for CIFAR; binary when `binary` (then a float stem conv precedes the XNOR blocks)."""

  def __init__(self, *, binary: bool, num_classes: int = 10, width: float = 1.0,
               input_quantizer: str = "ste_sign", kernel_quantizer: str = "magnitude_aware_sign",
               binarize_first_layer: bool = False, binarize_last_layer: bool = False, dtype=None,
               rngs: nnx.Rngs):
    dtype = layers.resolve_dtype(dtype)
    if not binary and (binarize_first_layer or binarize_last_layer):
      raise ValueError("binarize_first_layer / binarize_last_layer apply to bin_vgg16 only")
    quant = dict(input_quantizer=input_quantizer, kernel_quantizer=kernel_quantizer)
    if binary:
      stem_channels = layers.scale_channels(STEM_CHANNELS, width)
      if binarize_first_layer:
        self.stem = layers.xnor_conv_block(3, stem_channels, **quant, dtype=dtype, rngs=rngs)
      else:
        self.stem = layers.ConvBNReLU(3, stem_channels, dtype=dtype, rngs=rngs)
      in_channels = stem_channels
    else:
      self.stem = None
      in_channels = 3
    stages = []
    for _, convs in _stage_layout(width, in_channels):
      if binary:
        blocks = [layers.xnor_conv_block(cin, cout, **quant, dtype=dtype, rngs=rngs)
                  for cin, cout in convs]
      else:
        blocks = [layers.ConvBNReLU(cin, cout, dtype=dtype, rngs=rngs) for cin, cout in convs]
      stages.append(nnx.List(blocks))
    self.stages = nnx.List(stages)
    features = convs[-1][1]
    self.classifier = layers.dense(features, num_classes, **(quant if binarize_last_layer else {}),
                                   dtype=dtype, rngs=rngs)

  def __call__(self, x):
    if self.stem is not None:
      x = self.stem(x)
    for stage in self.stages:
      for block in stage:
        x = block(x)
      x = layers.max_pool(x)
    if x.shape[1:3] != (1, 1):
      raise ValueError(f"VGG16 expects 32x32 inputs (five 2x2 pools down to 1x1), got maps of "
                       f"{x.shape[1:3]} after the last pool")
    x = x.reshape(x.shape[0], -1)
    return self.classifier(x)

  def inference_program(self):
    steps = [] if self.stem is None else [self.stem]
    for stage in self.stages:
      steps += [*stage, inference.MaxPool(2)]  # layers.max_pool
    return steps + [inference.Flatten(), self.classifier]


def vgg16(*, num_classes: int = 10, width: float = 1.0, dtype=None, rngs: nnx.Rngs) -> VGG16:
  """Float VGG16 (BatchNorm, ReLU) for CIFAR."""
  return VGG16(binary=False, num_classes=num_classes, width=width, dtype=dtype, rngs=rngs)


def bin_vgg16(*, num_classes: int = 10, width: float = 1.0, input_quantizer: str = "ste_sign",
              kernel_quantizer: str = "magnitude_aware_sign", binarize_first_layer: bool = False,
              binarize_last_layer: bool = False, dtype=None, rngs: nnx.Rngs) -> VGG16:
  """XNOR-Net VGG16 (float stem conv and classifier unless binarize_first/last_layer)."""
  return VGG16(binary=True, num_classes=num_classes, width=width, input_quantizer=input_quantizer,
               kernel_quantizer=kernel_quantizer, binarize_first_layer=binarize_first_layer,
               binarize_last_layer=binarize_last_layer, dtype=dtype, rngs=rngs)
