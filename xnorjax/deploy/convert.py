"""A trained model as its layer program: one op per layer, as the model computes in evaluation mode.

`layer_program(model)` walks the model's modules in call order and emits the ops of
`xnorjax.deploy.program` with the model's arrays (running BatchNorm statistics; dropout is the
identity). Binary convs become `sign` + `xnor_conv` with the kernel binarized by its quantizer,
bit-packed once, and its per-channel scale (alpha for magnitude_aware_sign, 1 for sign) in the
float epilogue, which is how `model.eval()` runs them; a conv bias follows as `add_bias`.

The walk knows the layers `BinaryConv`, `BinaryDense` and `nnx.BatchNorm`; every other module
(`BinaryConvBlock`, the zoo's models, a user's own model) describes its computation with an
`inference_program` method (`xnorjax.nn.inference`), whose submodules are walked in turn. A module
without one, or a layer setting that the packed kernels cannot run (activation_scaling, bfloat16,
a non-sign input quantizer), raises a ValueError naming its path.
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
from xnorjax.nn import functional
from xnorjax.nn import inference
from xnorjax.ops import packing

_KINDS = {inference.MaxPool: "max_pool", inference.AvgPool: "avg_pool", inference.Relu: "relu",
          inference.Sign: "sign", inference.Flatten: "flatten",
          inference.GlobalAvgPool: "global_avg_pool"}


class _Builder:
  """Collects ops and their arrays (float32 / uint32 numpy-convertible jax arrays)."""

  def __init__(self):
    self.ops: list[program_lib.Op] = []
    self.arrays: dict[str, dict[str, jax.Array]] = {}

  def add(self, kind: str, path: str, arrays: Optional[dict[str, Any]] = None, **attrs):
    base = re.sub(r"[^a-z0-9]+", "_", f"{path}_{kind}".lower()).strip("_")
    names = {op.name for op in self.ops}
    name, n = base, 1
    while name in names:
      n += 1
      name = f"{base}_{n}"
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


def _step(b: _Builder, step, path: str):
  """An op without parameters (`xnorjax.nn.inference`)."""
  kind = _KINDS[type(step)]
  if kind in ("max_pool", "avg_pool"):
    b.add(kind, path, window=step.window, strides=step.strides,
          padding=_json_padding(step.padding))
  else:
    b.add(kind, path)


def _module(b: _Builder, module, paths: dict[int, str], active: tuple = ()):
  """The ops of one layer, or of a module's inference program, in call order."""
  path = paths[id(module)]
  if isinstance(module, xnn.BinaryConv):
    _conv(b, module, path)
  elif isinstance(module, xnn.BinaryDense):
    _dense(b, module, path)
  elif isinstance(module, nnx.BatchNorm):
    _batch_norm(b, module, path)
  else:
    _program(b, module, paths, active)


def _program(b: _Builder, module, paths: dict[int, str], active: tuple):
  """The ops of the steps of `module.inference_program()`.

  An op without parameters is named after the module, or at the top level after the step before it
  (e.g. "stages.0.1" then its max-pooling).
  """
  path = paths[id(module)]
  where = path or f"the model ({type(module).__name__})"
  previous = "input"
  if not callable(getattr(module, "inference_program", None)):
    raise ValueError(f"{where}: export does not support {type(module).__name__} modules (it "
                     "converts BinaryConv, BinaryDense, nnx.BatchNorm and modules with an "
                     "inference_program, see xnorjax.nn.inference)")
  if id(module) in active:
    raise ValueError(f"{where}: its inference_program contains the module itself")
  try:
    steps = list(module.inference_program())
  except ValueError as e:
    raise ValueError(f"{where}: {e}") from e
  for k, step in enumerate(steps):
    if isinstance(step, nnx.Module):
      if id(step) not in paths:
        raise ValueError(f"{where}: step {k} of its inference_program, a {type(step).__name__}, "
                         "is not a submodule of the model")
      _module(b, step, paths, active + (id(module),))
      previous = paths[id(step)]
    elif type(step) in _KINDS:
      _step(b, step, path or previous)
    else:
      raise ValueError(f"{where}: step {k} of its inference_program is {step!r}, neither a "
                       "submodule nor an op of xnorjax.nn.inference")


def layer_program(model: nnx.Module):
  """(ops, arrays): the layer program of `model` (see the module docstring).

  Raises:
    TypeError: `model` is not an nnx.Module.
    ValueError: a module or layer that export does not support, named by its path.
  """
  if not isinstance(model, nnx.Module):
    raise TypeError(f"model must be a flax.nnx.Module, got {type(model).__name__}")
  paths = {id(m): ".".join(str(p) for p in path) for path, m in nnx.iter_modules(model)}
  b = _Builder()
  _module(b, model, paths)
  program_lib.check_program(b.ops, b.arrays)
  return b.ops, b.arrays


def model_bytes(model: nnx.Module) -> int:
  """Bytes of the model's parameters and BatchNorm statistics as stored for training (float32)."""
  state = nnx.state(model, nnx.Param, nnx.BatchStat)
  return int(sum(np.asarray(x).nbytes for x in jax.tree.leaves(state)))
