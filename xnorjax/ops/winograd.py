"""Winograd F(4x4, 3x3) float32 conv of the C++ extension (CPU, AVX-512): conv2d's "winograd".

A 3x3 conv of stride 1 computed per 4x4 output tile in Winograd's transformed domain (Lavin &
Gray, 2016) takes 36 multiply-adds per tile and channel pair instead of the direct sum's 144; the
extension (ffi/cpu/winograd.cc) transforms the tiles and runs the 36 per-point matrix products on
the direct conv's microkernel. The kernel is transformed here, U = G k G^T (f32[36, C, O]).
Two FFI targets, zero padding of at most 2 per side ((top, bottom), (left, right)):

  xnorjax_winograd_conv          x f32[N, H, W, C], u f32[36, C, O] -> y f32[N, Ho, Wo, O]
      y = the conv of x with the 3x3 kernel whose transform is u
  xnorjax_winograd_kernel_grad   x f32[N, H, W, C], g f32[N, Ho, Wo, O] -> du f32[36, C, O]
      du = the gradient of sum(g * y) with respect to u; dk = G^T du G

`conv` is differentiable once, in reverse mode (a custom_vjp): the input gradient is the Winograd
conv of the output gradient with the flipped kernel (channel axes swapped, padding 2 - pad), the
kernel gradient G^T du G. The sums are the direct conv's, rounded differently: F(4x4, 3x3)
rounds about 10x more (relative errors around 1e-5 in float32, against 1e-6 for the direct sum;
the transforms use the points 0, +-1, +-2 of Lavin & Gray). Training does not notice: a 16-epoch
bin_vgg16 run on real CIFAR-10 stayed within 2 points of the direct conv's curve (docs/training.md).
vmap and data-parallel sharding as for the direct conv (xnorjax/ops/float_conv.py).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from xnorjax.ops import float_conv
from xnorjax.ops import partitioning

Pads = float_conv.Pads

# The kernel transform of F(4x4, 3x3) (the input and output transforms live in the extension).
KERNEL_TRANSFORM = np.array([[1 / 4, 0, 0],
                             [-1 / 6, -1 / 6, -1 / 6],
                             [-1 / 6, 1 / 6, -1 / 6],
                             [1 / 24, 1 / 12, 1 / 6],
                             [1 / 24, -1 / 12, 1 / 6],
                             [0, 0, 1]], np.float32)


def available() -> bool:
  """True when the extension is built and this CPU runs it (AVX-512F, as the direct conv)."""
  return float_conv.available()


def fits(kernel_hw, pads: Pads) -> bool:
  """True for the problems the targets take: a 3x3 kernel with pads in [0, 2]."""
  return tuple(kernel_hw) == (3, 3) and float_conv.pads_fit(kernel_hw, pads)


# U[a * 6 + b] = sum_{i, j} G[a, i] G[b, j] k[i, j]: one (36, 9) x (9, C * O) matmul, several
# times faster on the CPU than XLA's contraction of the three-operand einsum (512 x 512 kernels:
# 3.6 against 40 ms).
_POINTS_FROM_TAPS = np.kron(KERNEL_TRANSFORM, KERNEL_TRANSFORM)


def transform_kernel(k):
  """U[a * 6 + b, c, o] = (G k[:, :, c, o] G^T)[a, b]: f32[3, 3, C, O] -> f32[36, C, O]."""
  u = jnp.dot(jnp.asarray(_POINTS_FROM_TAPS), k.reshape(9, -1), precision=lax.Precision.HIGHEST)
  return u.reshape((36,) + k.shape[2:])


def kernel_grad_from_transformed(du):
  """dk = G^T dU G (the transpose of `transform_kernel`): f32[36, C, O] -> f32[3, 3, C, O]."""
  dk = jnp.dot(jnp.asarray(_POINTS_FROM_TAPS.T), du.reshape(36, -1),
               precision=lax.Precision.HIGHEST)
  return dk.reshape((3, 3) + du.shape[1:])


def _conv_call(x, u, pads: Pads):
  ho, wo = float_conv.check_problem(x.shape, (3, 3), pads)
  return float_conv.padded_ffi_call("xnorjax_winograd_conv", (x.shape[0], ho, wo, u.shape[2]), x,
                                    u, pads)


def _kernel_grad_call(x, g, pads: Pads):
  float_conv.check_problem(x.shape, (3, 3), pads)
  return float_conv.padded_ffi_call("xnorjax_winograd_kernel_grad",
                                    (36, x.shape[3], g.shape[3]), x, g, pads)


# Shardy rules: only the batch factor n may stay sharded (xnorjax/ops/partitioning.py).
_CONV_RULE = "n h w c, p c o -> n y z o"
_KERNEL_GRAD_RULE = "n h w c, n y z o -> p c o"


@functools.cache
def _conv_op(pads: Pads):
  return partitioning.batch_op(lambda x, u: _conv_call(x, u, pads), _CONV_RULE, (True, False))


@functools.cache
def _kernel_grad_op(pads: Pads):
  return partitioning.batch_op(lambda x, g: _kernel_grad_call(x, g, pads), _KERNEL_GRAD_RULE,
                               (True, True), sum_over_batch=True)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv(x, k, pads: Pads):
  """y = x conv k (3x3, stride 1, zero padding `pads` in [0, 2]), float32, by F(4x4, 3x3)."""
  if tuple(k.shape[:2]) != (3, 3):
    raise ValueError(f"Winograd F(4x4, 3x3) needs a 3x3 kernel, got {tuple(k.shape[:2])}")
  pads = float_conv.as_pads(pads)
  return partitioning.keep_batch_sharding(_conv_op(pads)(x, transform_kernel(k)), x)


def _conv_fwd(x, k, pads):
  return conv(x, k, pads), (x, k)


def _conv_bwd(pads, residuals, g):
  x, k = residuals
  return (conv(g, float_conv.flipped(k), float_conv.back_pads(k.shape[:2], pads)),
          kernel_grad(x, g, pads))


conv.defvjp(_conv_fwd, _conv_bwd)


def kernel_grad(x, g, pads: Pads):
  """dk[i, j, c, o] = sum_{n, h, w} xpad[n, h + i, w + j, c] g[n, h, w, o] for a 3x3 kernel, by
  Winograd F(4x4, 3x3). Not differentiable itself."""
  du = _kernel_grad_op(float_conv.as_pads(pads))(x, g)
  return kernel_grad_from_transformed(du)
