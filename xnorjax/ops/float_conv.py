"""The float32 conv of the C++ extension (CPU, AVX-512): conv2d's "native" formulation.

XLA's CPU convs reach about half the rate of its best float32 matmul on the VGG16 shapes, and its
kernel gradients (a matmul contracting over every pixel of the batch) less; the extension's
microkernels (ffi/cpu/float_conv.cc) about all of it (180-230 GMAC/s on the 2-core Zen 5).
Two FFI targets, stride 1, zero padding given as pads ((top, bottom), (left, right)):

  xnorjax_float_conv              x f32[N, H, W, C], k f32[KH, KW, C, O] -> y f32[N, Ho, Wo, O]
      y[n, h, w, o] = sum_{i, j, c} xpad[n, h + i, w + j, c] k[i, j, c, o]
  xnorjax_float_conv_kernel_grad  x f32[N, H, W, C], g f32[N, Ho, Wo, O] -> dk f32[KH, KW, C, O]
      dk[i, j, c, o] = sum_{n, h, w} xpad[n, h + i, w + j, c] g[n, h, w, o]

`conv` is differentiable once, in reverse mode (a custom_vjp, like conv2d's "lax_padded"): the
input gradient is a conv of the output gradient with the flipped kernel (channel axes swapped,
padding kernel - 1 - pad), the kernel gradient the second target. Pads must lie in
[0, kernel - 1] (conv2d pads larger ones explicitly first).

Under `vmap` the conv folds the mapped axis into its batch (one call); the kernel gradient runs
one call per mapped element. In a computation sharded over several devices both calls partition
along the batch (xnorjax/ops/partitioning.py): each device convolves its shard, and the kernel
gradients of the shards are summed across devices (an all-reduce, as XLA's own conv gradient).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from xnorjax import _native
from xnorjax.ops import partitioning

Pads = tuple[tuple[int, int], tuple[int, int]]


def available() -> bool:
  """True when the extension is built and this CPU runs its float32 conv (AVX-512F)."""
  if not _native.extension_available():
    return False
  return bool(_native.require_extension().xnor.cpu_features().get("avx512f", False))


def as_pads(pads) -> Pads:
  """pads as a hashable ((top, bottom), (left, right)) of ints."""
  return tuple((int(lo), int(hi)) for lo, hi in pads)


def pad_attrs(pads: Pads) -> dict:
  (top, bottom), (left, right) = pads
  return dict(pad_top=np.int64(top), pad_bottom=np.int64(bottom), pad_left=np.int64(left),
              pad_right=np.int64(right))


def _out_hw(hw, kernel_hw, pads: Pads):
  return tuple(n + lo + hi - k + 1 for n, k, (lo, hi) in zip(hw, kernel_hw, pads))


def pads_fit(kernel_hw, pads: Pads) -> bool:
  """True when every pad lies in [0, kernel - 1] (so the input gradient's padding is >= 0)."""
  return all(0 <= p <= k - 1 for pair, k in zip(pads, kernel_hw) for p in pair)


def check_problem(x_shape, kernel_hw, pads: Pads) -> tuple[int, int]:
  """The output size; raises ValueError for pads outside [0, kernel - 1] or an empty output."""
  if not pads_fit(kernel_hw, pads):
    raise ValueError(f"pads must lie in [0, kernel - 1] per side, got {pads} for a "
                     f"{tuple(kernel_hw)} kernel")
  ho, wo = _out_hw(x_shape[1:3], kernel_hw, pads)
  if ho < 1 or wo < 1:
    raise ValueError(f"kernel of size {tuple(kernel_hw)} is larger than the padded input "
                     f"(input {tuple(x_shape[1:3])}, pads {pads})")
  return ho, wo


def padded_ffi_call(target: str, result_shape, a, b, pads: Pads):
  """The extension's FFI target `target` on (a, b) with the pads as attributes, returning
  f32[result_shape] (the calls of this module and of xnorjax/ops/winograd.py)."""
  _native.require_extension()  # registers the targets (or says how to build them)
  out = jax.ShapeDtypeStruct(tuple(result_shape), jnp.float32)
  return jax.ffi.ffi_call(target, out)(a, b, **pad_attrs(pads))


def _conv_call(x, k, pads: Pads):
  ho, wo = check_problem(x.shape, k.shape[:2], pads)
  return padded_ffi_call("xnorjax_float_conv", (x.shape[0], ho, wo, k.shape[3]), x, k, pads)


def _kernel_grad_call(x, g, kernel_hw, pads: Pads):
  check_problem(x.shape, kernel_hw, pads)
  return padded_ffi_call("xnorjax_float_conv_kernel_grad",
                         tuple(kernel_hw) + (x.shape[3], g.shape[3]), x, g, pads)


# Shardy rules: only the batch factor n may stay sharded (xnorjax/ops/partitioning.py).
_CONV_RULE = "n h w c, i j c o -> n y z o"
_KERNEL_GRAD_RULE = "n h w c, n y z o -> i j c o"


@functools.cache
def _conv_op(pads: Pads):
  """The conv call, partitioned along the batch, as a custom_vmap function of (x, k)."""
  return partitioning.batch_op(lambda x, k: _conv_call(x, k, pads), _CONV_RULE, (True, False))


@functools.cache
def _kernel_grad_op(kernel_hw: tuple[int, int], pads: Pads):
  """The kernel-gradient call, partitioned along the batch (each device's sum all-reduced), as a
  custom_vmap function of (x, g): mapped, it runs one call per element (per-example gradients)."""
  return partitioning.batch_op(lambda x, g: _kernel_grad_call(x, g, kernel_hw, pads),
                               _KERNEL_GRAD_RULE, (True, True), sum_over_batch=True)


def back_pads(kernel_hw, pads: Pads) -> Pads:
  """The padding of the input-gradient conv: kernel - 1 - pad on each side."""
  return tuple((k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip(kernel_hw, pads))


def flipped(k):
  """The kernel of the input-gradient conv: flipped in space, input and output channels swapped."""
  return jnp.flip(k, (0, 1)).transpose(0, 1, 3, 2)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv(x, k, pads: Pads):
  """y = x conv k (stride 1, zero padding `pads`), float32, by the extension's kernel."""
  return partitioning.keep_batch_sharding(_conv_op(as_pads(pads))(x, k), x)


def _conv_fwd(x, k, pads):
  return conv(x, k, pads), (x, k)


def _conv_bwd(pads, residuals, g):
  x, k = residuals
  return conv(g, flipped(k), back_pads(k.shape[:2], pads)), kernel_grad(x, g, k.shape[:2], pads)


conv.defvjp(_conv_fwd, _conv_bwd)


def kernel_grad(x, g, kernel_hw, pads: Pads):
  """dk[i, j, c, o] = sum_{n, h, w} xpad[n, h + i, w + j, c] g[n, h, w, o] (the kernel gradient).

  Not differentiable itself (neither is `conv` twice).
  """
  return _kernel_grad_op(tuple(int(v) for v in kernel_hw), as_pads(pads))(x, g)
