"""Bit packing: +-1 values (the sign of a float, or a bool) stored 32 to a uint32 word.

Encoding, shared by every packed kernel in xnorjax:
  * bit 1 means +1 (x >= 0, so sign(0) = +1, as in `xnorjax.quantizers.ste_sign`), bit 0 means -1.
    NaN compares false and packs as -1.
  * value j along the packed axis goes to bit (j % 32) of word (j // 32), little-endian in the word.
  * the unused high bits of the last word are always 0. With zero tails, XOR and AND popcounts over
    whole words count only real values, so kernels need no tail mask.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from xnorjax import _native
from xnorjax.ops import implementations

WORD_BITS = 32
IMPLEMENTATIONS = implementations.OP_IMPLEMENTATIONS


def packed_words(n: int) -> int:
  """Number of uint32 words that hold `n` packed bits."""
  return -(-int(n) // WORD_BITS)


def _normalize_axis(axis: int, ndim: int, name: str = "axis") -> int:
  if not isinstance(axis, (int, np.integer)):
    raise TypeError(f"{name} must be an int, got {type(axis).__name__}")
  if not -ndim <= axis < ndim:
    raise ValueError(f"{name}={axis} is out of range for an array of rank {ndim}")
  return int(axis) % ndim


def _as_sign_float32(x: jax.Array, name: str = "x") -> jax.Array:
  """Float32 array whose sign (>= 0 is +1) carries the bit: bools map True -> +1, False -> -1."""
  dtype = jnp.result_type(x)
  if dtype == jnp.bool_:
    return jnp.where(x, 1.0, -1.0).astype(jnp.float32)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(f"{name} must be a floating-point or bool array, got dtype {dtype}")
  return jnp.asarray(x).astype(jnp.float32)


def _pack_last_axis_reference(x: jax.Array) -> jax.Array:
  """Pure-JAX packing along the last axis (any platform)."""
  n = x.shape[-1]
  words = packed_words(n)
  bits = (x >= 0).astype(jnp.uint32)
  bits = jnp.pad(bits, [(0, 0)] * (x.ndim - 1) + [(0, words * WORD_BITS - n)])
  bits = bits.reshape(*x.shape[:-1], words, WORD_BITS)
  shifts = jnp.arange(WORD_BITS, dtype=jnp.uint32)
  return jnp.sum(bits << shifts, axis=-1, dtype=jnp.uint32)


def _pack_last_axis_kernel(x: jax.Array) -> jax.Array:
  """Packing along the last axis by the C++ kernel `xnorjax_pack_bits` (CPU)."""
  _native.require_extension()
  out_type = jax.ShapeDtypeStruct(x.shape[:-1] + (packed_words(x.shape[-1]),), jnp.uint32)
  return jax.ffi.ffi_call("xnorjax_pack_bits", out_type, vmap_method="broadcast_all")(x)


def _pack_last_axis(x: jax.Array, implementation: str) -> jax.Array:
  # "auto" is the reference: its compare-shift-sum fuses with whatever produced x (a BatchNorm, a
  # sign, a transpose) and runs multi-threaded, while an FFI call is an opaque, single-threaded
  # boundary (slower, alone and inside the packed layers, wherever measured).
  if implementation in ("reference", "auto") or x.size == 0:
    return _pack_last_axis_reference(x)
  return _pack_last_axis_kernel(x)


def pack_bits(x, axis: int = -1, *, implementation: str = "auto") -> jax.Array:
  """Packs the signs of `x` along `axis` into uint32 words (see the module docstring).

  Args:
    x: float (any precision) or bool array. Floats pack as +1 where x >= 0; bools as +1 where True.
    axis: the axis to pack; in the result it has length ceil(x.shape[axis] / 32).
    implementation: "auto" (the reference, the faster where measured: see `_pack_last_axis`),
      "reference" (pure JAX), or "kernel" (the C++ kernel on CPU, the CUDA kernel on GPU; raises
      `xnorjax.ExtensionNotBuiltError` if the extension is not built). See
      `xnorjax.ops.implementations`.

  Returns:
    uint32 array, x's shape with `axis` replaced by the number of words.
  """
  implementations.check_choice(implementation, IMPLEMENTATIONS, "implementation")
  x = jnp.asarray(x) if not isinstance(x, jax.Array) else x
  if x.ndim == 0:
    raise ValueError("x must have at least one axis to pack, got a scalar")
  axis = _normalize_axis(axis, x.ndim)
  if x.shape[axis] == 0:
    raise ValueError(f"x has length 0 along axis {axis}: nothing to pack")
  x = _as_sign_float32(x)
  moved = jnp.moveaxis(x, axis, -1)
  return jnp.moveaxis(_pack_last_axis(moved, implementation), -1, axis)


def unpack_bits(words, n: int, axis: int = -1, dtype=jnp.float32) -> jax.Array:
  """Inverse of `pack_bits`: the +-1 values of the first `n` bits along `axis`, as `dtype`."""
  words = jnp.asarray(words)
  if words.dtype != jnp.uint32:
    raise TypeError(f"words must be a uint32 array, got dtype {words.dtype}")
  if words.ndim == 0:
    raise ValueError("words must have at least one axis, got a scalar")
  axis = _normalize_axis(axis, words.ndim)
  if not (isinstance(n, (int, np.integer)) and 0 < n <= words.shape[axis] * WORD_BITS):
    raise ValueError(f"n={n} must be a positive int of at most {words.shape[axis] * WORD_BITS} "
                     f"(32 x the {words.shape[axis]} words along axis {axis})")
  if packed_words(n) != words.shape[axis]:
    raise ValueError(f"n={n} needs {packed_words(n)} words, but axis {axis} has {words.shape[axis]}")
  moved = jnp.moveaxis(words, axis, -1)
  shifts = jnp.arange(WORD_BITS, dtype=jnp.uint32)
  bits = (moved[..., :, None] >> shifts) & 1
  bits = bits.reshape(*moved.shape[:-1], moved.shape[-1] * WORD_BITS)[..., :n]  # no -1: 0-size axes
  values = jnp.where(bits == 1, 1, -1).astype(dtype)
  return jnp.moveaxis(values, -1, axis)
