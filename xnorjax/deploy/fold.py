"""Folding a layer program into the deployed program: everything between two binary layers becomes
the first one's epilogue, so that activations stay packed.

A binary layer's output u = alpha * dot (dot: the exact integer +-1 dot product) goes through a
chain of per-channel monotone ops (conv bias, BatchNorm, ReLU, max-pooling, the next BatchNorm)
to the next binary layer's sign. Two facts make the chain a per-channel test on dot:
  * Without the pools the chain maps each integer dot in [-K, K] (K: the layer's fan-in) through
    monotone float32 steps, so its sign is a threshold on dot in one direction, or a constant.
    `sign_thresholds` evaluates the chain, with the same float32 ops as the model, on every
    integer in [-K, K], and writes the result as the epilogue test dot * scale + bias >= 0 with
    scale +-1 and a half-integer bias (scale 0 and bias +-1 for constant channels). Both are
    exact in float32, so the packed layer reproduces the sign of the model's own float32
    arithmetic for every dot, bit for bit.
  * Max-pooling commutes with monotone maps, also in float32 (rounding is monotone): the sign of
    f(max v) is the OR of the window's signs of f(v) where f increases, their AND where it
    decreases (`packed_max_pool`).
A binary layer whose chain does not end in a binary layer (the last one, before the float
classifier) keeps a float epilogue: bias and BatchNorm folded into its scale and bias
(`xnorjax.ops.fold_batch_norm`), so its output agrees with the model's within float32 rounding.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from xnorjax.deploy import program as program_lib
from xnorjax.deploy.program import Op
from xnorjax.ops import packing
from xnorjax.ops import xnor as xnor_lib

# Per-channel monotone ops between a binary layer and the next one's sign.
CHAIN_KINDS = ("add_bias", "batch_norm", "relu", "max_pool")
_TABLE_ELEMENTS = 1 << 24  # largest [2K + 1, channels] table evaluated at once


@dataclasses.dataclass
class Folded:
  """The deployed program, its arrays, and per binary op the layer-program ops folded into it."""
  program: list[Op]
  arrays: dict[str, dict[str, jax.Array]]
  absorbed: dict[str, list[str]]


def fan_in(op: Op, kernel_shape: Sequence[int]) -> int:
  """K, the number of +-1 products in one dot of a binary op (|dot| <= K)."""
  if op.kind == "xnor_conv":
    return int(kernel_shape[0] * kernel_shape[1] * op.attrs["channels"])
  return int(op.attrs["features"])


def _chain_values(chain: Sequence[Op], arrays, y):
  return program_lib.run(chain, arrays, y)


def sign_thresholds(scale, chain: Sequence[Op], arrays: Mapping[str, Mapping[str, Any]],
                    max_abs_dot: int) -> tuple[np.ndarray, np.ndarray]:
  """Epilogue (scale', bias') with dot * scale' + bias' >= 0 iff chain(dot * scale) >= 0.

  Exact for every integer dot in [-max_abs_dot, max_abs_dot]: the chain (elementwise ops only) is
  evaluated by the same float32 ops as the model on fl(dot * scale), what the per-layer packed
  kernel's float epilogue returns, and the resulting signs are written as a threshold.

  Args:
    scale: float32 [O], the binary layer's per-channel scale (alpha), >= 0.
    chain: the elementwise ops (add_bias, batch_norm, relu) from the layer to the sign.
    arrays: their arrays.
    max_abs_dot: K.

  Returns:
    float32 scale' in {-1, 0, 1} and bias' [O] (half-integers, or +-1 where scale' is 0).

  Raises:
    ValueError: the chain is not monotone in dot for some channel (it contains a non-monotone op).
  """
  for op in chain:
    if op.kind not in CHAIN_KINDS or op.kind == "max_pool":
      raise ValueError(f"sign_thresholds: op {op.name!r} ({op.kind}) is not an elementwise "
                       f"monotone op ({', '.join(k for k in CHAIN_KINDS if k != 'max_pool')})")
  dots = np.arange(-max_abs_dot, max_abs_dot + 1)
  scale = jnp.asarray(scale, jnp.float32)
  channel_arrays = {op.name: arrays[op.name] for op in chain if op.name in arrays}
  run = jax.jit(functools.partial(_chain_values, tuple(chain)))
  chunk = max(1, _TABLE_ELEMENTS // dots.size)  # channels per evaluation, to bound memory
  values = []
  for lo in range(0, scale.shape[0], chunk):
    part = jax.tree.map(lambda v, lo=lo: v[lo:lo + chunk], channel_arrays)
    y = jnp.asarray(dots, jnp.float32)[:, None] * scale[None, lo:lo + chunk]  # fl(dot * scale)
    values.append(np.asarray(run(part, y[:, None, None, :])))
  values = np.concatenate(values, axis=-1)
  bits = np.asarray(values >= 0)[:, 0, 0, :]               # [2K + 1, O]
  ones = bits.sum(axis=0)
  first, last = bits[0], bits[-1]
  increasing, decreasing = ~first & last, first & ~last
  t_up = max_abs_dot - ones + 1                            # the smallest dot that gives +1
  t_down = -max_abs_dot + ones - 1                         # the largest dot that gives +1
  d = dots[:, None]
  expected = np.where(increasing, d >= t_up, np.where(decreasing, d <= t_down, first))
  bad = np.nonzero((bits != expected).any(axis=0))[0]
  if bad.size:
    raise ValueError(f"sign_thresholds: the chain {[op.name for op in chain]} is not monotone in "
                     f"the dot product for channel(s) {bad[:8].tolist()}")
  new_scale = np.where(increasing, 1.0, np.where(decreasing, -1.0, 0.0)).astype(np.float32)
  new_bias = np.where(increasing, 0.5 - t_up,
                      np.where(decreasing, t_down + 0.5, np.where(first, 1.0, -1.0)))
  return new_scale, new_bias.astype(np.float32)


def pool_directions(after: Sequence[Op], arrays, channels: int) -> np.ndarray:
  """Per channel, +1 where the ops `after` a pool (up to the sign) increase, -1 where they decrease.

  Only a BatchNorm with a negative scale (gamma) reverses the order; a zero scale makes the channel
  constant, where either pooling rule holds (+1 is returned).
  """
  direction = np.ones(channels)
  for op in after:
    if op.kind == "batch_norm" and "scale" in arrays.get(op.name, {}):
      direction = direction * np.where(np.asarray(arrays[op.name]["scale"]) < 0, -1.0, 1.0)
  return direction


def _fold_affine(scale, bias, ops: Sequence[Op], arrays):
  """Folds the leading add_bias / batch_norm ops into (scale, bias); returns them and the count."""
  count = 0
  for op in ops:
    if op.kind == "add_bias":
      bias = bias + arrays[op.name]["bias"]
    elif op.kind == "batch_norm":
      a = arrays[op.name]
      scale, bias = xnor_lib.fold_batch_norm(scale, bias, a["mean"], a["var"], a.get("scale"),
                                             a.get("bias"), epsilon=op.attrs["epsilon"])
    else:
      break
    count += 1
  return scale, bias, count


def fold_program(program: Sequence[Op], arrays: Mapping[str, Mapping[str, Any]]) -> Folded:
  """The deployed program of a layer program (see the module docstring)."""
  program_lib.check_program(program, arrays)
  out, out_arrays, absorbed = [], {}, {}

  def emit(op, op_arrays=None):
    out.append(op)
    if op_arrays:
      out_arrays[op.name] = dict(op_arrays)

  i = 0
  while i < len(program):
    op = program[i]
    nxt = program[i + 1] if i + 1 < len(program) else None
    if op.kind == "sign" and nxt is not None and nxt.kind in program_lib.BINARY_KINDS:
      emit(Op("pack", op.name))
      i += 1
      continue
    if op.kind not in program_lib.BINARY_KINDS:
      emit(op, arrays.get(op.name))
      i += 1
      continue

    a = arrays[op.name]
    if np.any(np.asarray(a["bias"]) != 0) or op.attrs["output"] != program_lib.FLOAT_OUTPUT:
      raise ValueError(f"fold_program: {op.name!r} is not a layer-program binary op (float "
                       "output, zero epilogue bias)")
    end = i + 1
    while end < len(program) and program[end].kind in CHAIN_KINDS:
      end += 1
    chain = list(program[i + 1:end])
    to_binary = (end + 1 < len(program) and program[end].kind == "sign"
                 and program[end + 1].kind in program_lib.BINARY_KINDS)
    if to_binary:
      elementwise = [c for c in chain if c.kind != "max_pool"]
      scale, bias = sign_thresholds(a["scale"], elementwise, arrays,
                                    fan_in(op, a["kernel"].shape))
      emit(Op(op.kind, op.name, {**op.attrs, "output": program_lib.PACKED_OUTPUT}),
           dict(kernel=a["kernel"], scale=jnp.asarray(scale), bias=jnp.asarray(bias)))
      for k, pool in enumerate(chain):
        if pool.kind != "max_pool":
          continue
        direction = pool_directions(chain[k + 1:], arrays, scale.shape[0])
        emit(Op("packed_max_pool", pool.name, pool.attrs),
             dict(increasing=packing.pack_bits(jnp.asarray(direction, jnp.float32))))
      absorbed[op.name] = [c.name for c in chain] + [program[end].name]
      i = end + 1  # the sign is the packed output itself
    else:
      scale, bias, count = _fold_affine(a["scale"], a["bias"], chain, arrays)
      emit(op, dict(kernel=a["kernel"], scale=scale, bias=bias))
      absorbed[op.name] = [c.name for c in chain[:count]]
      i += 1 + count
  program_lib.check_program(out, out_arrays)
  return Folded(out, out_arrays, absorbed)
