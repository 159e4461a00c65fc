"""Pytree helpers shared by the training tests."""

import jax
import numpy as np


def float_leaves(state) -> list[np.ndarray]:
  """The floating-point arrays of a trained state: parameters, then BatchNorm statistics."""
  leaves = jax.tree.leaves(jax.device_get({"params": state["params"], "rest": state["rest"]}))
  return [np.asarray(x) for x in leaves if np.issubdtype(np.asarray(x).dtype, np.floating)]
