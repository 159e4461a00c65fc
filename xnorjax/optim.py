"""Optimizer utilities for binary networks: latent-weight clipping and the binary-kernel mask.

`clip_latent_weights` is the optax transform that keeps latent binary weights in [-1, 1] (larq's
weight clip constraint); `binary_kernel_mask` selects the kernels it applies to, and `path_keys`
turns a pytree key path into the plain tuple both match parameters by.
"""

from __future__ import annotations

from flax import nnx
import jax
import jax.numpy as jnp
import optax

from xnorjax import quantizers
from xnorjax.nn import binary_layers


def _land_in_box(p, u, lo, hi):
  """Updates u' close to u such that p + u' (rounded as optax.apply_updates does) lies in [lo, hi].

  p + (target - p) can round one ulp outside the box when target - p is inexact; nudging u' one
  ulp at a time fixes it (two rounds cover every float case; see tests/library/test_quantizers.py).
  """
  for _ in range(2):
    landed = (p + u).astype(p.dtype)
    u = jnp.where(landed > hi, jnp.nextafter(u, jnp.asarray(-jnp.inf, u.dtype)), u)
    u = jnp.where(landed < lo, jnp.nextafter(u, jnp.asarray(jnp.inf, u.dtype)), u)
  return u


def clip_latent_weights(clip_value: float = 1.0) -> optax.GradientTransformation:
  """Optax transform keeping parameters in [-clip_value, clip_value] (larq's weight clip).

  Place it last in an `optax.chain`: it rewrites the incoming updates u into
  projection_box(params + u) - params, so that `optax.apply_updates(params, updates)` lands in the
  box (exactly, after rounding). Apply it to the latent binary kernels only, e.g.
  `optax.chain(optax.adam(1e-3), optax.masked(clip_latent_weights(), binary_kernel_mask(model)))`.
  Latent weights outside the window |w| <= clip_value would get zero straight-through gradient
  forever; clipping keeps them trainable (BNN, Courbariaux et al. 2016).
  """
  clip_value = quantizers.check_clip_value(clip_value)

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("clip_latent_weights needs params: call tx.update(updates, state, params)")
    proposed = optax.apply_updates(params, updates)
    target = optax.projections.projection_box(proposed, jax.tree.map(lambda _: -clip_value, proposed),
                                              jax.tree.map(lambda _: clip_value, proposed))
    def fix(proposed, t, p, u):
      inside = (proposed >= -clip_value) & (proposed <= clip_value)  # keep these steps bit-exact
      return jnp.where(inside, u, _land_in_box(p, (t - p).astype(u.dtype), -clip_value, clip_value))

    new_updates = jax.tree.map(fix, proposed, target, params, updates)
    return new_updates, state

  return optax.GradientTransformation(init_fn, update_fn)


def path_keys(path) -> tuple:
  """A pytree key path as a tuple of plain keys (dict keys, attribute names, sequence indices)."""
  keys = []
  for entry in path:
    for attr in ("key", "name", "idx"):
      if hasattr(entry, attr):
        keys.append(getattr(entry, attr))
        break
    else:
      keys.append(entry)
  return tuple(keys)


def binary_kernel_mask(params_or_model):
  """Bool pytree over `nnx.state(model, nnx.Param)`: True on binarized kernels, False elsewhere.

  A `kernel` is marked when its layer is an `xnorjax.nn.BinaryConv` / `BinaryDense` (blocks
  included) with a kernel_quantizer. The result is the mask for `optax.masked` / the labels' source
  for `optax.partition`; it matches both the pure-array params that `nnx.Optimizer.update` passes
  to optax and the Variable-leaf state given to `init`.

  Args:
    params_or_model: an `nnx.Module`. (Plain params pytrees carry no layer types; pass the model.)
  """
  if not isinstance(params_or_model, nnx.Module):
    raise TypeError("binary_kernel_mask needs the nnx.Module (a params pytree does not say which "
                    f"layers are binary), got {type(params_or_model).__name__}")
  binary_paths = set()
  for path, module in nnx.iter_modules(params_or_model):
    if isinstance(module, (binary_layers.BinaryConv, binary_layers.BinaryDense)):
      if module.kernel_quantizer is not None:
        binary_paths.add(tuple(path) + ("kernel",))
  params = nnx.as_pure(nnx.state(params_or_model, nnx.Param))
  return jax.tree_util.tree_map_with_path(lambda path, _: path_keys(path) in binary_paths, params)
