"""Bop, the binary optimizer (Helwegen et al. 2019, "Latent weights do not exist"), as optax.

Bop trains binary weights w in {-1, +1} directly, without latent real-valued weights: it keeps an
exponential moving average of the gradients,

  m <- (1 - gamma) * m + gamma * g,

and flips a weight where that average is strong and points the way the weight already points:

  w <- -w  where |m| > tau and sign(m) == sign(w)   (equivalently sign(w) * m > tau);  else w.

(Gradient descent would move w against g; a consistent gradient of w's own sign means -w lowers
the loss.) gamma, the adaptivity rate, sets how fast m forgets; tau, the threshold, how strong a
signal must be to flip. The defaults are larq's `Bop` (gamma 1e-4, tau 1e-8).

Initial weights: Bop needs +-1 weights, so start from `sign_init(params)` (sign(w), sign(0) = +1;
experiments/optim.py's `initial_params` applies it to the binary kernels before the first step).
The update moves every weight to sign(w), negated where it flips (as larq's `Bop`,
var <- sign(-sign(var * m - tau) * var)); for +-1 weights it is exact (updates 0 or -2w). An
optax update is added to the weights, so real-valued weights given anyway land within a float
ulp of +-1 on the first update, not exactly on it: sign them first.

Use it for the binary kernels only, beside another optimizer for the float parameters:
`optax.partition({"binary": bop(), "float": optax.adamw(...)}, labels)` (experiments/optim.py
does this for `config.optim.binary_optimizer = "bop"`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

DEFAULT_GAMMA = 1e-4      # larq's Bop default adaptivity rate.
DEFAULT_THRESHOLD = 1e-8  # larq's Bop default flip threshold.


class BopState(NamedTuple):
  """The exponential moving average of the gradients, one per parameter."""
  moving_average: optax.Updates


def _check_number(value, name: str) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
    raise TypeError(f"{name} must be a Python number, got {type(value).__name__}")
  return float(value)


def sign(w: jax.Array) -> jax.Array:
  """+1 where w >= 0, else -1, in w's dtype (sign(0) = +1, as xnorjax.quantizers)."""
  return jnp.where(w >= 0, 1, -1).astype(w.dtype)


def sign_init(params):
  """The initial weights Bop needs: sign(w) (+1 for w >= 0) of every leaf of `params`."""
  return jax.tree.map(sign, params)


def flip_mask(w: jax.Array, moving_average: jax.Array, threshold: float) -> jax.Array:
  """True where Bop flips w: |m| > tau and sign(m) == sign(w), i.e. sign(w) * m > tau."""
  return sign(w) * moving_average > threshold


def bop(gamma: float = DEFAULT_GAMMA, threshold: float = DEFAULT_THRESHOLD
        ) -> optax.GradientTransformation:
  """The Bop optimizer for binary weights (see the module docstring).

  Args:
    gamma: adaptivity rate of the gradients' moving average, in (0, 1].
    threshold: flip threshold tau >= 0 on the moving average.

  Returns:
    An optax transformation whose `update(grads, state, params)` returns updates that move every
    parameter to sign(w), negated where Bop flips it. It needs `params`.
  """
  gamma = _check_number(gamma, "gamma")
  threshold = _check_number(threshold, "threshold")
  if not 0.0 < gamma <= 1.0:
    raise ValueError(f"gamma (Bop's adaptivity rate) must be in (0, 1], got {gamma}")
  if not threshold >= 0.0:
    raise ValueError(f"threshold (Bop's flip threshold) must be >= 0, got {threshold}")

  def init_fn(params):
    return BopState(jax.tree.map(jnp.zeros_like, params))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("bop needs params: call tx.update(grads, state, params)")
    moving_average = jax.tree.map(
        lambda m, g: (1.0 - gamma) * m + gamma * g.astype(m.dtype), state.moving_average, updates)

    def step(w, m):
      s = sign(w)
      new_w = jnp.where(flip_mask(w, m, threshold), -s, s)
      return (new_w - w).astype(w.dtype)

    return jax.tree.map(step, params, moving_average), BopState(moving_average)

  return optax.GradientTransformation(init_fn, update_fn)
