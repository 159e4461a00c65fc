"""A trained model as its layer program: one op per layer, as the model computes in evaluation mode.

`layer_program(model)` walks the model's modules in call order and emits the ops of
`xnorjax.deploy.program` with the model's arrays (running BatchNorm statistics; dropout is the
identity). Binary convs become `sign` + `xnor_conv` with the kernel binarized by its quantizer,
bit-packed once, and its per-channel scale (alpha for magnitude_aware_sign, 1 for sign) in the
float epilogue, which is how `model.eval()` runs them; a conv bias follows as `add_bias`.

Supported: bin_vgg16, bin_small_cnn and bin_nin (and their float twins), i.e. models built from
`xnorjax.nn` BinaryConv / BinaryDense / BinaryConvBlock, `nnx.BatchNorm`, ReLU and pooling in the
layouts of `xnorjax.models.vgg`, `small` and `nin`. Other models (bin_resnet18, whose real-valued
shortcuts keep every activation in float) raise a ValueError naming them.
"""

from __future__ import annotations

import re
from typing import Any, Optional

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from xnorjax import nn as xnn
from xnorjax import quantizers
from xnorjax.deploy import program as program_lib
from xnorjax.models import layers
from xnorjax.models import nin as nin_lib
from xnorjax.models import small as small_lib
from xnorjax.models import vgg as vgg_lib
from xnorjax.nn import functional
from xnorjax.ops import packing

SUPPORTED_MODELS = ("bin_vgg16", "vgg16", "bin_small_cnn", "small_cnn", "bin_nin", "nin")
_RELUS = (jax.nn.relu, nnx.relu)
_HALVING_POOL = dict(window=(2, 2), strides=(2, 2), padding="VALID")  # layers.max_pool
_NIN_POOL = dict(window=(3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


class _Builder:
  """Collects ops and their arrays (float32 / uint32 numpy-convertible jax arrays)."""

  def __init__(self):
    self.ops: list[program_lib.Op] = []
    self.arrays: dict[str, dict[str, jax.Array]] = {}

  def add(self, kind: str, path: str, arrays: Optional[dict[str, Any]] = None, **attrs):
    name = re.sub(r"[^a-z0-9]+", "_", f"{path}_{kind}".lower()).strip("_")
    self.ops.append(program_lib.Op(kind, name, attrs))
    if arrays:
      self.arrays[name] = {k: jnp.asarray(v) for k, v in arrays.items() if v is not None}

  @property
  def last_kind(self) -> Optional[str]:
    return self.ops[-1].kind if self.ops else None


def _check_float32(module, path: str):
  dtype = getattr(module, "dtype", None)
  if dtype is not None and jnp.dtype(dtype) != jnp.float32:
    raise ValueError(f"{path}: computes in {jnp.dtype(dtype).name}; export supports float32 "
                     "models only (build the model with dtype='float32')")


def _value(variable) -> Optional[jax.Array]:
  return None if variable is None else jnp.asarray(variable[...], jnp.float32)


def _json_padding(padding):
  return padding if isinstance(padding, (str, int)) else [list(p) for p in padding]


# ----------------------------------------------------------------------------------------------
# Layers.


def _batch_norm(b: _Builder, bn: nnx.BatchNorm, path: str):
  _check_float32(bn, path)
  if bn.axis not in (-1, (-1,)):
    raise ValueError(f"{path}: BatchNorm over axis {bn.axis}; export supports the last axis only")
  b.add("batch_norm", path, dict(mean=_value(bn.mean), var=_value(bn.var), scale=_value(bn.scale),
                                 bias=_value(bn.bias)), epsilon=float(bn.epsilon))


def _binarized_kernel(layer, path: str):
  """(bits packed along the input axis, per-output-channel scale) of a sign-like kernel."""
  kq = layer.kernel_quantizer
  if not (quantizers.is_sign(kq) or quantizers.is_scaled_sign(kq)):
    raise ValueError(f"{path}: kernel_quantizer {kq!r} is not sign or magnitude_aware_sign")
  wb = kq(jnp.asarray(layer.kernel[...], jnp.float32))
  scale = jnp.max(jnp.abs(wb), axis=tuple(range(wb.ndim - 1)))  # as functional._channel_scale
  return packing.pack_bits(wb, axis=-2), scale


def _binary_input(b: _Builder, layer, path: str) -> bool:
  """Adds the input sign when the layer binarizes its input; True if its input is +-1."""
  iq, kq = layer.input_quantizer, layer.kernel_quantizer
  if kq is None or not (quantizers.is_sign(kq) or quantizers.is_scaled_sign(kq)):
    return False
  if iq is not None and functional.packable(iq, kq):
    b.add("sign", path)
    return True
  return iq is None and b.last_kind == "sign"  # an input binarized by the block (NIN)


def _conv(b: _Builder, conv: xnn.BinaryConv, path: str):
  _check_float32(conv, path)
  if conv.activation_scaling:
    raise ValueError(f"{path}: activation_scaling=True (XNOR-Net's K) is not supported by export")
  common = dict(strides=list(conv.strides), padding=_json_padding(conv.padding))
  if conv.input_quantizer is None and conv.kernel_quantizer is None:
    b.add("conv", path, dict(kernel=_value(conv.kernel), bias=_value(conv.bias)),
          formulation=conv.formulation, **common)
  elif _binary_input(b, conv, path):
    bits, scale = _binarized_kernel(conv, path)
    b.add("xnor_conv", path, dict(kernel=bits, scale=scale, bias=jnp.zeros_like(scale)),
          channels=conv.in_features, pad_value=conv.pad_value, output=program_lib.FLOAT_OUTPUT,
          **common)
    if conv.bias is not None:
      b.add("add_bias", path, dict(bias=_value(conv.bias)))
  elif conv.input_quantizer is None:  # binary weights, real inputs (BWN): a float conv
    b.add("conv", path, dict(kernel=conv.kernel_quantizer(_value(conv.kernel)),
                             bias=_value(conv.bias)), formulation=conv.formulation, **common)
  else:
    raise ValueError(f"{path}: input_quantizer {conv.input_quantizer!r} is not a sign; the packed "
                     "kernels cannot run this layer")


def _dense(b: _Builder, dense: xnn.BinaryDense, path: str):
  _check_float32(dense, path)
  if dense.input_quantizer is None and dense.kernel_quantizer is None:
    b.add("dense", path, dict(kernel=_value(dense.kernel), bias=_value(dense.bias)))
  elif _binary_input(b, dense, path):
    bits, scale = _binarized_kernel(dense, path)
    b.add("xnor_dense", path, dict(kernel=bits, scale=scale, bias=jnp.zeros_like(scale)),
          features=dense.in_features, output=program_lib.FLOAT_OUTPUT)
    if dense.bias is not None:
      b.add("add_bias", path, dict(bias=_value(dense.bias)))
  elif dense.input_quantizer is None:
    b.add("dense", path, dict(kernel=dense.kernel_quantizer(_value(dense.kernel)),
                              bias=_value(dense.bias)))
  else:
    raise ValueError(f"{path}: input_quantizer {dense.input_quantizer!r} is not a sign; the packed "
                     "kernels cannot run this layer")


def _activation(b: _Builder, activation, path: str):
  if activation is None:
    return
  if activation not in _RELUS:
    raise ValueError(f"{path}: activation {activation!r} is not supported by export (ReLU only)")
  b.add("relu", path)


def _module(b: _Builder, module, path: str):
  """The ops of one layer or block, in call order."""
  if isinstance(module, xnn.BinaryConv):
    _conv(b, module, path)
  elif isinstance(module, xnn.BinaryDense):
    _dense(b, module, path)
  elif isinstance(module, nnx.BatchNorm):
    _batch_norm(b, module, path)
  elif isinstance(module, layers.ConvBNReLU):
    _conv(b, module.conv, f"{path}.conv")
    _batch_norm(b, module.bn, f"{path}.bn")
    b.add("relu", path)
  elif isinstance(module, layers.XnorConvBlock):
    _module(b, module.binary, f"{path}.binary")
    _batch_norm(b, module.bn_out, f"{path}.bn_out")
    b.add("relu", path)
  elif isinstance(module, xnn.BinaryConvBlock):
    if module.batch_norm is not None:
      _batch_norm(b, module.batch_norm, f"{path}.batch_norm")
    _conv(b, module.conv, f"{path}.conv")
    _activation(b, module.activation, path)
  elif isinstance(module, nin_lib.NinDropoutBlock):
    _batch_norm(b, module.bn, f"{path}.bn")
    if module.input_quantizer is not None:
      iq = quantizers.get(module.input_quantizer, argument="input_quantizer")
      if not quantizers.is_sign(iq):
        raise ValueError(f"{path}: input_quantizer {module.input_quantizer!r} is not a sign")
      b.add("sign", path)
    _conv(b, module.conv, f"{path}.conv")  # dropout: the identity in evaluation mode
    b.add("relu", path)
  else:
    raise ValueError(f"{path}: export does not support {type(module).__name__} modules")


# ----------------------------------------------------------------------------------------------
# Models.


def _vgg16(b: _Builder, model: vgg_lib.VGG16):
  if model.stem is not None:
    _module(b, model.stem, "stem")
  for s, stage in enumerate(model.stages):
    for i, block in enumerate(stage):
      _module(b, block, f"stages.{s}.{i}")
    b.add("max_pool", f"stages.{s}.pool", **_HALVING_POOL)
  b.add("flatten", "classifier")
  _module(b, model.classifier, "classifier")


def _small_cnn(b: _Builder, model: small_lib.SmallCNN):
  _module(b, model.stem, "stem")
  b.add("max_pool", "stem.pool", **_HALVING_POOL)
  for i, block in enumerate(model.blocks):
    _module(b, block, f"blocks.{i}")
    b.add("max_pool", f"blocks.{i}.pool", **_HALVING_POOL)
  b.add("global_avg_pool", "classifier")
  _module(b, model.classifier, "classifier")


def _nin(b: _Builder, model: nin_lib.NIN):
  _module(b, model.stem, "stem")
  _module(b, model.stem_bn, "stem_bn")
  b.add("relu", "stem")
  for i, layer in enumerate(model.body):
    if isinstance(layer, str):
      b.add(f"{layer}_pool", f"body.{i}", **_NIN_POOL)
    else:
      _module(b, layer, f"body.{i}")
  _module(b, model.head_bn, "head_bn")
  _module(b, model.head, "head")
  b.add("relu", "head")
  b.add("global_avg_pool", "head")


_MODELS = ((vgg_lib.VGG16, _vgg16), (small_lib.SmallCNN, _small_cnn), (nin_lib.NIN, _nin))


def layer_program(model: nnx.Module):
  """(ops, arrays): the layer program of `model` (see the module docstring).

  Raises:
    ValueError: a model or layer that export does not support, named.
  """
  for cls, walk in _MODELS:
    if isinstance(model, cls):
      b = _Builder()
      walk(b, model)
      program_lib.check_program(b.ops, b.arrays)
      return b.ops, b.arrays
  raise ValueError(f"export supports the models {', '.join(SUPPORTED_MODELS)}; got a "
                   f"{type(model).__name__} (bin_resnet18's real-valued shortcuts keep its "
                   "activations in float, so it has no packed form here)")


def model_bytes(model: nnx.Module) -> int:
  """Bytes of the model's parameters and BatchNorm statistics as stored for training (float32)."""
  state = nnx.state(model, nnx.Param, nnx.BatchStat)
  return int(sum(np.asarray(x).nbytes for x in jax.tree.leaves(state)))
