"""Model registry: every model is chosen by name and built from keyword options (big_vision style).

  create_model("bin_vgg16", num_classes=10, rngs=nnx.Rngs(0))

Names and the module that defines each (`xnorjax.models.<module>.<name>`):
  vgg16, bin_vgg16          VGG16 for CIFAR; the binary one as the reference XNOR-Net PyTorch code.
  nin, bin_nin              Network-in-Network of the XNOR-Net CIFAR port (jiecaoyu/XNOR-Net-PyTorch).
  resnet18, bin_resnet18    CIFAR ResNet-18; the binary one Bi-Real style (a real shortcut per conv).
  bin_reactnet18            ReActNet-18: bin_resnet18's units with RSign before and RPReLU after each conv.
  small_cnn, bin_small_cnn  three convs (two XNOR blocks in the binary one): smoke tests, quick runs.

`bin_vgg16_conv_shapes()` lists the binary conv layer shapes of bin_vgg16 (for kernel benchmarks).
"""

from __future__ import annotations

import importlib
import inspect

from xnorjax.models.vgg import ConvShape
from xnorjax.models.vgg import bin_vgg16_conv_shapes

_REGISTRY = {
    "vgg16": "vgg",
    "bin_vgg16": "vgg",
    "nin": "nin",
    "bin_nin": "nin",
    "resnet18": "resnet",
    "bin_resnet18": "resnet",
    "small_cnn": "small",
    "bin_small_cnn": "small",
    "bin_reactnet18": "reactnet",
}

MODEL_NAMES = tuple(_REGISTRY)


def get_model_fn(name: str):
  """The constructor registered under `name` (raises ValueError listing the known names)."""
  if name not in _REGISTRY:
    raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}")
  return getattr(importlib.import_module(f"xnorjax.models.{_REGISTRY[name]}"), name)


def check_options(name: str, options) -> None:
  """Raises ValueError naming any option that model `name`'s constructor does not take."""
  fn = get_model_fn(name)
  accepted = [p for p in inspect.signature(fn).parameters if p != "rngs"]
  unknown = sorted(set(options) - set(accepted))
  if unknown:
    raise ValueError(f"model {name!r} does not accept option(s) {', '.join(unknown)}; "
                     f"accepted: {', '.join(accepted)}")


def create_model(name: str, *, rngs, **options):
  """Builds model `name` with `options` (checked against its signature, so typos fail clearly)."""
  check_options(name, options)
  return get_model_fn(name)(rngs=rngs, **options)


__all__ = ["ConvShape", "MODEL_NAMES", "bin_vgg16_conv_shapes", "check_options", "create_model",
           "get_model_fn"]
