"""A model for inference as a program: a list of ops applied in order to one activation.

Both forms of a model are programs over one vocabulary, run by one interpreter (`run`):
  * the layer program (`xnorjax.deploy.convert.layer_program`): one op per layer, computing what
    the model computes in evaluation mode (float32; each binary conv as the per-layer packed kernel
    with alpha in its float epilogue, as `model.eval()` runs it);
  * the deployed program (`xnorjax.deploy.fold.fold_program`): BatchNorms, biases, alpha, ReLU and
    the next layer's sign folded into the packed kernels' epilogues, activations kept packed from
    one binary layer to the next.

An op is a kind, a unique name (its arrays are `arrays[name]`, a dict of arrays) and static JSON
attributes. Kinds and their arrays:
  conv             float conv (`xnorjax.nn.functional.binary_conv2d` without quantizers):
                   kernel [KH, KW, C, O], bias [O] (optional); attrs strides, padding, formulation.
  dense            float dense: kernel [I, O], bias [O] (optional).
  batch_norm       inference BatchNorm, the formula of `nnx.BatchNorm` (feature axis last):
                   mean, var, scale (optional), bias (optional); attrs epsilon.
  add_bias         x + bias.
  relu
  max_pool         float max-pooling; attrs window, strides, padding (pairs).
  avg_pool         float average pooling, padded positions counted (`nnx.avg_pool`).
  global_avg_pool  mean over H and W: [N, H, W, C] -> [N, C].
  flatten          [N, ...] -> [N, -1].
  sign             +1 where x >= 0, else -1 (`xnorjax.quantizers.ste_sign`'s forward).
  pack             the same signs packed 32 to a uint32 word along channels (`pack_bits`, XLA).
  xnor_conv        `xnorjax.ops.xnor_conv` on +-1 floats or packed activations: kernel uint32
                   [KH, KW, ceil(C / 32), O] (packed once), scale, bias [O]; attrs channels,
                   strides, padding, pad_value, output ("float": dot * scale + bias, "packed":
                   the packed bits of dot * scale + bias >= 0).
  xnor_dense       `xnorjax.ops.xnor_dense`: kernel uint32 [ceil(I / 32), O], scale, bias;
                   attrs features, output.
  packed_max_pool  max-pooling of packed signs: per channel the OR of the window's bits where the
                   map the pooled values go through before their sign is increasing, the AND where
                   it is decreasing (`packed_max_pool`): increasing uint32 [ceil(C / 32)] (bit 1 =
                   OR); attrs window, strides, padding.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping, Sequence

from flax import nnx
import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from xnorjax import quantizers
from xnorjax.nn import functional
from xnorjax.ops import packing
from xnorjax.ops import xnor as xnor_lib

FLOAT_OUTPUT = "float"
PACKED_OUTPUT = "packed"
OUTPUTS = (FLOAT_OUTPUT, PACKED_OUTPUT)
_ALL_ONES = np.uint32(0xFFFFFFFF)


@dataclasses.dataclass(frozen=True)
class Op:
  """One step of a program: `kind`, a unique `name` (key of its arrays) and static `attrs`."""
  kind: str
  name: str
  attrs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def to_json(self) -> dict:
    """A JSON-ready dict (tuples as lists, as they come back from a file)."""
    return {"kind": self.kind, "name": self.name, "attrs": json.loads(json.dumps(dict(self.attrs)))}

  @classmethod
  def from_json(cls, record: Mapping[str, Any]) -> "Op":
    return cls(record["kind"], record["name"], dict(record.get("attrs", {})))


def _pair(value) -> tuple[int, int]:
  return tuple(int(v) for v in value)


def _padding(value):
  """A JSON padding spec back to what the ops take: a string, an int or ((lo, hi), (lo, hi))."""
  if isinstance(value, (str, int)):
    return value
  return tuple(_pair(p) for p in value)


def _pool_padding(value):
  return value if isinstance(value, str) else tuple(_pair(p) for p in value)


# ----------------------------------------------------------------------------------------------
# Ops: (x, arrays, **attrs) -> x.


def batch_norm(x, mean, var, scale=None, bias=None, *, epsilon: float):
  """Inference BatchNorm, the arithmetic of `nnx.BatchNorm` (flax.nnx.nn.normalization._normalize).

  Written out here so that folded thresholds can evaluate it on the exact float32 values the
  model produces: y = (x - mean) * (rsqrt(var + epsilon) * scale) + bias.
  """
  y = x - mean
  mul = lax.rsqrt(var + epsilon)
  if scale is not None:
    mul = mul * scale
  y = y * mul
  if bias is not None:
    y = y + bias
  return y


def packed_max_pool(x, increasing, *, window, strides, padding) -> jax.Array:
  """Max-pooling of packed signs, exact for signs of monotone per-channel maps of the pooled values.

  If the float model computes sign(f(max_i v_i)) with f increasing in channel c, that is the OR
  of the window's sign(f(v_i)); with f decreasing (max turns into min), their AND. `x` holds the
  packed sign(f(v_i)); `increasing` (uint32 words along channels) selects OR (bit 1) or AND.
  Padded positions take no part (0 for OR, all ones for AND); zero tail bits stay zero.

  Args:
    x: uint32 [N, H, W, ceil(C / 32)].
    increasing: uint32 [ceil(C / 32)].
    window, strides: (h, w) pairs; padding: ((top, bottom), (left, right)) or "VALID".
  """
  window, strides = _pair(window), _pair(strides)
  if isinstance(padding, str) and padding != "VALID":
    raise ValueError(f"packed_max_pool: padding must be 'VALID' or explicit pairs, got {padding!r}")
  pads = ((0, 0), (0, 0)) if padding == "VALID" else tuple(_pair(p) for p in padding)
  _, h, w, _ = x.shape
  oh = (h + sum(pads[0]) - window[0]) // strides[0] + 1
  ow = (w + sum(pads[1]) - window[1]) // strides[1] + 1
  spatial = ((0, 0),) + pads + ((0, 0),)
  x_or = jnp.pad(x, spatial, constant_values=np.uint32(0))
  x_and = jnp.pad(x, spatial, constant_values=_ALL_ONES)
  any_bits = all_bits = None
  for i in range(window[0]):
    for j in range(window[1]):
      rows = slice(i, i + (oh - 1) * strides[0] + 1, strides[0])
      cols = slice(j, j + (ow - 1) * strides[1] + 1, strides[1])
      a, b = x_or[:, rows, cols, :], x_and[:, rows, cols, :]
      any_bits = a if any_bits is None else any_bits | a
      all_bits = b if all_bits is None else all_bits & b
  return (any_bits & increasing) | (all_bits & ~increasing)


def _conv(x, a, *, strides, padding, formulation="auto"):
  return functional.binary_conv2d(x, a["kernel"], a.get("bias"), strides=_pair(strides),
                                  padding=_padding(padding), formulation=formulation)


def _dense(x, a):
  return functional.binary_dense(x, a["kernel"], a.get("bias"))


def _batch_norm(x, a, *, epsilon):
  return batch_norm(x, a["mean"], a["var"], a.get("scale"), a.get("bias"), epsilon=epsilon)


def _max_pool(x, a, *, window, strides, padding):
  del a
  return nnx.max_pool(x, _pair(window), strides=_pair(strides), padding=_pool_padding(padding))


def _avg_pool(x, a, *, window, strides, padding):
  del a
  return nnx.avg_pool(x, _pair(window), strides=_pair(strides), padding=_pool_padding(padding))


def _xnor_conv(x, a, *, channels, strides, padding, pad_value, output):
  return xnor_lib.xnor_conv(x, a["kernel"], channels=channels, strides=_pair(strides),
                            padding=_padding(padding), pad_value=pad_value, scale=a["scale"],
                            bias=a["bias"], pack_output=output == PACKED_OUTPUT)


def _xnor_dense(x, a, *, features, output):
  return xnor_lib.xnor_dense(x, a["kernel"], features=features, scale=a["scale"], bias=a["bias"],
                             pack_output=output == PACKED_OUTPUT)


def _packed_max_pool(x, a, *, window, strides, padding):
  return packed_max_pool(x, a["increasing"], window=window, strides=strides,
                         padding=_pool_padding(padding))


OPS = {
    "conv": _conv,
    "dense": _dense,
    "batch_norm": _batch_norm,
    "add_bias": lambda x, a: x + a["bias"],
    "relu": lambda x, a: jax.nn.relu(x),
    "max_pool": _max_pool,
    "avg_pool": _avg_pool,
    "global_avg_pool": lambda x, a: x.mean(axis=(1, 2)),
    "flatten": lambda x, a: x.reshape(x.shape[0], -1),
    "sign": lambda x, a: quantizers.ste_sign(x),
    # XLA's packing fuses with the float ops before it (their output is never written out); the
    # C++ pack_bits kernel, a custom call, needs it materialised: 5x slower on bin_vgg16's stem.
    "pack": lambda x, a: packing.pack_bits(x, axis=-1, implementation="reference"),
    "xnor_conv": _xnor_conv,
    "xnor_dense": _xnor_dense,
    "packed_max_pool": _packed_max_pool,
}
BINARY_KINDS = ("xnor_conv", "xnor_dense")


def check_program(program: Sequence[Op], arrays: Mapping[str, Mapping[str, Any]]):
  """ValueError for unknown kinds, repeated names or ops whose arrays are missing."""
  names = set()
  for op in program:
    if op.kind not in OPS:
      raise ValueError(f"op {op.name!r} has unknown kind {op.kind!r}; known: {', '.join(OPS)}")
    if op.name in names:
      raise ValueError(f"op name {op.name!r} appears twice in the program")
    names.add(op.name)
  unused = sorted(set(arrays) - names)
  if unused:
    raise ValueError(f"arrays {unused} belong to no op of the program")


def run(program: Sequence[Op], arrays: Mapping[str, Mapping[str, Any]], x) -> jax.Array:
  """Applies the ops of `program` to `x` in order (pure: jit it with the arrays as an argument)."""
  for op in program:
    x = OPS[op.kind](x, arrays.get(op.name, {}), **op.attrs)
  return x
