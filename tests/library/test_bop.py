"""Bop (xnorjax/bop.py) against a numpy closed form, its partition beside the float optimizer
(experiments/optim.py), a tiny training run with it, and the linear learning-rate schedule."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import optim
from experiments import trainer
from xnorjax import bop
from xnorjax import models
from flax import nnx

from helpers import tiny_runs


def _numpy_bop(w, grads, gamma, threshold):
  """The Bop rule step by step in float64 numpy, from +-1 weights w."""
  m = np.zeros_like(w, np.float64)
  trajectory = []
  for g in grads:
    m = (1 - gamma) * m + gamma * g
    flip = (np.abs(m) > threshold) & (np.sign(m) == w)
    w = np.where(flip, -w, w)
    trajectory.append((w.copy(), m.copy()))
  return trajectory


def test_bop_update_matches_the_closed_form(rng):
  gamma, threshold = 0.3, 0.05
  w0 = rng.normal(size=(6, 7)).astype(np.float32)
  w0[0, :2] = 0.0  # sign(0) = +1
  # Gradients with a persistent sign per entry plus noise, so that some weights flip back and forth.
  bias = rng.choice([-0.2, 0.2], size=w0.shape)
  grads = [(bias + 0.3 * rng.normal(size=w0.shape)).astype(np.float32) for _ in range(8)]
  tx = bop.bop(gamma, threshold)
  params = bop.sign_init({"w": jnp.asarray(w0)})
  np.testing.assert_array_equal(params["w"], np.where(w0 >= 0, 1.0, -1.0))
  state = tx.init(params)
  flips = 0
  for (want_w, want_m), g in zip(_numpy_bop(np.asarray(params["w"]), grads, gamma, threshold), grads):
    old = np.asarray(params["w"])
    updates, state = tx.update({"w": jnp.asarray(g)}, state, params)
    params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(np.asarray(state.moving_average["w"]), want_m, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(params["w"]), want_w)  # exactly +-1
    flips += int(np.sum(np.sign(old) != np.asarray(params["w"])))
  assert flips > 0 and np.abs(np.asarray(params["w"])).min() == 1.0


def test_bop_moves_real_weights_next_to_their_signs():
  """Weights that are not +-1 (not sign_init'ed) are moved to within an ulp of sign(w) or -sign(w)."""
  w = jnp.asarray([0.3, -1.7, 0.0, 2.5, -0.04])
  g = jnp.asarray([1.0, -1.0, -1.0, 0.0, 0.0])
  tx = bop.bop(gamma=1.0, threshold=0.5)
  updates, _ = tx.update(g, tx.init(w), w)
  np.testing.assert_allclose(optax.apply_updates(w, updates), [-1.0, 1.0, 1.0, 1.0, -1.0],
                             rtol=2 ** -23)


def test_bop_flips_only_above_the_threshold_in_the_weights_direction():
  tx = bop.bop(gamma=1.0, threshold=0.5)  # gamma 1: m is the last gradient.
  w = jnp.asarray([1.0, 1.0, 1.0, -1.0, -1.0, -1.0])
  g = jnp.asarray([0.6, 0.5, -0.9, -0.6, -0.5, 0.9])
  updates, _ = tx.update(g, tx.init(w), w)
  np.testing.assert_array_equal(np.asarray(optax.apply_updates(w, updates)),
                                [-1.0, 1.0, 1.0, 1.0, -1.0, -1.0])


@pytest.mark.parametrize("kwargs,message", [
    (dict(gamma=0.0), r"gamma .* must be in \(0, 1\], got 0.0"),
    (dict(gamma=1.5), r"gamma .* must be in \(0, 1\], got 1.5"),
    (dict(threshold=-1e-3), r"threshold .* must be >= 0, got -0.001"),
])
def test_bop_arguments_are_checked(kwargs, message):
  with pytest.raises(ValueError, match=message):
    bop.bop(**kwargs)
  with pytest.raises(TypeError, match="gamma must be a Python number"):
    bop.bop(gamma="0.1")


def test_bop_needs_params():
  tx = bop.bop()
  w = jnp.ones(3)
  with pytest.raises(ValueError, match="bop needs params"):
    tx.update(w, tx.init(w))


def _parts():
  return trainer.split_model(models.create_model("bin_small_cnn", width=0.125, rngs=nnx.Rngs(0)))


def test_bop_trains_the_binary_kernels_and_adam_the_float_parameters(rng):
  parts = _parts()
  labels = optim.param_labels(parts.params, parts.binary_mask)
  cfg = tiny_runs.tiny_config("bin_small_cnn").optim
  cfg.weight_decay = 0.1
  bop_cfg = cfg.copy_and_resolve_references()
  bop_cfg.binary_optimizer, bop_cfg.bop_gamma, bop_cfg.bop_threshold = "bop", 0.5, 1e-3
  with_bop = optim.create_optimizer(bop_cfg, labels, lambda step: 0.01)
  plain = optim.create_optimizer(cfg, labels, lambda step: 0.01)
  params = optim.initial_params(bop_cfg, parts.params, labels)
  assert optim.initial_params(cfg, parts.params, labels) is parts.params
  grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
  s_bop, s_plain = with_bop.init(params), plain.init(params)
  update_bop, update_plain = jax.jit(with_bop.update), jax.jit(plain.update)
  for _ in range(2):
    u_bop, s_bop = update_bop(grads, s_bop, params)
    u_plain, s_plain = update_plain(grads, s_plain, params)
    new_bop, new_plain = optax.apply_updates(params, u_bop), optax.apply_updates(params, u_plain)
    flat_labels = jax.tree.leaves(labels)
    for label, old, b, p, g in zip(flat_labels, jax.tree.leaves(params), jax.tree.leaves(new_bop),
                                   jax.tree.leaves(new_plain), jax.tree.leaves(grads)):
      if label == "binary":  # +-1, and flipped where sign(w) * m > tau.
        assert set(np.unique(np.asarray(b))) <= {-1.0, 1.0}
      else:  # The float parameters get exactly the plain optimizer's step.
        np.testing.assert_array_equal(np.asarray(b), np.asarray(p))
    params = new_bop
  binary_leaves = [x for x, label in zip(jax.tree.leaves(params), flat_labels) if label == "binary"]
  assert len(binary_leaves) == 2
  # gamma 0.5, two equal gradients: m = 0.5 g, then 0.75 g; the weights start as signs.
  first = [np.where(np.asarray(x) >= 0, 1.0, -1.0)
           for x, label in zip(jax.tree.leaves(parts.params), flat_labels) if label == "binary"]
  grads_binary = [np.asarray(x) for x, label in zip(jax.tree.leaves(grads), flat_labels)
                  if label == "binary"]
  for w, s, g in zip(binary_leaves, first, grads_binary):
    after_one = np.where(s * 0.5 * g > 1e-3, -s, s)
    want = np.where(after_one * 0.75 * g > 1e-3, -after_one, after_one)
    np.testing.assert_array_equal(np.asarray(w), want)


def test_unknown_binary_optimizer_is_named():
  parts = _parts()
  labels = optim.param_labels(parts.params, parts.binary_mask)
  cfg = tiny_runs.tiny_config("bin_small_cnn").optim
  cfg.binary_optimizer = "lion"
  with pytest.raises(ValueError, match="binary_optimizer='lion' is not one of"):
    optim.create_optimizer(cfg, labels, lambda step: 0.01)
  float_parts = trainer.split_model(models.create_model("small_cnn", width=0.125, rngs=nnx.Rngs(0)))
  cfg.binary_optimizer = "bop"
  with pytest.raises(ValueError, match="needs a model with binary kernels"):
    optim.create_optimizer(cfg, optim.param_labels(float_parts.params, float_parts.binary_mask),
                           lambda step: 0.01)


def test_tiny_run_with_bop(tmp_path):
  config = tiny_runs.tiny_config("bin_small_cnn")
  config.optim.binary_optimizer = "bop"
  config.optim.bop_gamma = 1e-3
  config.optim.bop_threshold = 1e-6
  results = trainer.train_and_evaluate(config, str(tmp_path / "run"))
  assert results["interrupted_by"] is None and results["last_step"] == 12
  parts = trainer.split_model(trainer.create_model(config, config.seed))
  mask = jax.tree.leaves(parts.binary_mask)
  init = jax.tree.leaves(parts.params)
  trained = jax.tree.leaves(jax.device_get(results["state"]["params"]))
  flipped = 0
  for m, w0, w in zip(mask, init, trained):
    if m:
      assert set(np.unique(np.asarray(w))) == {-1.0, 1.0}
      flipped += int(np.sum(np.where(np.asarray(w0) >= 0, 1.0, -1.0) != np.asarray(w)))
  assert sum(mask) == 2 and flipped > 0
  assert results["test_accuracy"] > 0.2  # 10 classes: chance is 0.1.


def test_linear_schedule_with_warmup():
  cfg = tiny_runs.tiny_config("bin_small_cnn").optim
  cfg.schedule, cfg.learning_rate, cfg.warmup_epochs, cfg.final_lr_fraction = "linear", 0.4, 1.0, 0.0
  sched = optim.learning_rate_schedule(cfg, steps_per_epoch=10, total_steps=50)
  assert [float(sched(s)) for s in (0, 5, 10, 30, 50)] == pytest.approx([0.0, 0.2, 0.4, 0.2, 0.0])
