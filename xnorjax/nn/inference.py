"""Inference programs: how a module computes in evaluation mode, as steps `xnorjax.deploy` exports.

Deploy converts `BinaryConv`, `BinaryDense` and `nnx.BatchNorm` itself. Any other module describes
its evaluation-mode computation with a method

  def inference_program(self) -> Sequence[step]

whose steps run one after the other on one activation. A step is
  * a submodule of the module (an attribute, or an element of an `nnx.List` attribute): one of
    the layers above, or a module with its own `inference_program`; or
  * an op without parameters: `MaxPool`, `AvgPool`, `Relu`, `Sign`, `Flatten`, `GlobalAvgPool`.
Dropout is the identity in evaluation mode: leave it out. A module that cannot be written this way
(say, with a residual sum) raises ValueError from `inference_program` saying why; deploy adds the
module's path to the message.

  def inference_program(self):
    return [self.stem, *self.blocks, MaxPool((2, 2)), GlobalAvgPool(), self.classifier]
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from flax import nnx
import jax


def _pair(value, name: str) -> tuple[int, int]:
  pair = (value, value) if isinstance(value, int) else tuple(value)
  if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                               for v in pair):
    raise ValueError(f"{name} must be a positive int or a pair of them, got {value!r}")
  return pair


def _padding(value):
  if value == "VALID":
    return value
  try:
    pads = tuple((int(lo), int(hi)) for lo, hi in value)
  except (TypeError, ValueError):
    pads = ()
  if len(pads) != 2 or min(min(p) for p in pads) < 0:
    raise ValueError(f"padding must be 'VALID' or ((top, bottom), (left, right)), got {value!r}")
  return pads


@dataclasses.dataclass(frozen=True)
class _Pool:
  """`window`, `strides` (default: the window) and `padding` of a 2-D pooling of NHWC maps."""
  window: Any
  strides: Any = None
  padding: Any = "VALID"

  def __post_init__(self):
    window = _pair(self.window, "window")
    object.__setattr__(self, "window", window)
    object.__setattr__(self, "strides",
                       window if self.strides is None else _pair(self.strides, "strides"))
    object.__setattr__(self, "padding", _padding(self.padding))


class MaxPool(_Pool):
  """`nnx.max_pool(x, window, strides, padding)`."""


class AvgPool(_Pool):
  """`nnx.avg_pool(x, window, strides, padding)` (padded positions counted, as nnx's default)."""


@dataclasses.dataclass(frozen=True)
class Relu:
  """max(x, 0)."""


@dataclasses.dataclass(frozen=True)
class Sign:
  """+1 where x >= 0, else -1: the forward pass of `xnorjax.quantizers.ste_sign` (a module that
  binarizes its input itself before a conv whose input_quantizer is None)."""


@dataclasses.dataclass(frozen=True)
class Flatten:
  """[N, ...] -> [N, -1]."""


@dataclasses.dataclass(frozen=True)
class GlobalAvgPool:
  """The mean over H and W: [N, H, W, C] -> [N, C]."""


OPS = (MaxPool, AvgPool, Relu, Sign, Flatten, GlobalAvgPool)
_RELUS = (jax.nn.relu, nnx.relu)


def activation(fn: Callable) -> Relu:
  """The step of an activation function; ValueError for one without a step (ReLU only)."""
  if fn not in _RELUS:
    name = getattr(fn, "__name__", None) or repr(fn)
    raise ValueError(f"activation {name} has no inference step (ReLU only)")
  return Relu()
