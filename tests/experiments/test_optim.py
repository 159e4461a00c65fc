"""Tests for experiments/optim.py: schedules, parameter groups, per-group decay, latent clipping."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import optim
from experiments import trainer
from experiments.configs import default
from xnorjax import models


def _optim_config(**overrides):
  cfg = default.get_config().optim
  for k, v in overrides.items():
    cfg[k] = v
  return cfg


def test_cosine_schedule_with_warmup():
  cfg = _optim_config(schedule="cosine", learning_rate=0.4, warmup_epochs=2.0, final_lr_fraction=0.0)
  sched = optim.learning_rate_schedule(cfg, steps_per_epoch=10, total_steps=100)
  assert float(sched(0)) == 0.0
  assert float(sched(10)) == pytest.approx(0.2)
  assert float(sched(20)) == pytest.approx(0.4)
  # Cosine from step 20 to 100: half-way (step 60) is half the peak.
  assert float(sched(60)) == pytest.approx(0.2, rel=1e-5)
  assert float(sched(100)) == pytest.approx(0.0, abs=1e-7)


def test_step_schedule_with_warmup():
  cfg = _optim_config(schedule="step", learning_rate=1.0, warmup_epochs=1.0, step_epochs=(3, 5),
                      step_factor=0.1)
  sched = optim.learning_rate_schedule(cfg, steps_per_epoch=10, total_steps=80)
  assert [float(sched(s)) for s in (5, 10, 29, 30, 49, 50, 79)] == pytest.approx(
      [0.5, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01])


def test_unknown_optimizer_and_schedule_are_named():
  with pytest.raises(ValueError, match="schedule='exponential'"):
    optim.learning_rate_schedule(_optim_config(schedule="exponential"), 10, 100)
  with pytest.raises(ValueError, match="name='rmsprop'"):
    optim.create_optimizer(_optim_config(name="rmsprop"), {}, optax_constant(0.1))


def optax_constant(v):
  return lambda step: v


def _small_model_parts():
  model = models.create_model("bin_small_cnn", width=0.125, rngs=nnx.Rngs(0))
  return trainer.split_model(model)


def test_param_groups():
  parts = _small_model_parts()
  labels = optim.param_labels(parts.params, parts.binary_mask)
  flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(labels)[0]}
  binary = sorted(k for k, v in flat.items() if v == "binary")
  assert binary == ["['blocks'][0]['conv']['kernel']",
                    "['blocks'][1]['conv']['kernel']"]
  assert flat["['stem']['conv']['kernel']"] == "kernel"
  assert flat["['classifier']['kernel']"] == "kernel"
  assert flat["['classifier']['bias']"] == "norm_bias"
  assert flat["['stem']['bn']['scale']"] == "norm_bias"


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_weight_decay_per_group_and_latent_clipping(name, rng):
  parts = _small_model_parts()
  labels = optim.param_labels(parts.params, parts.binary_mask)
  cfg = _optim_config(name=name, momentum=0.0, weight_decay=0.1, weight_decay_binary=0.0,
                      weight_decay_norm_bias=0.0, clip_latent_weights=1.0)
  tx = optim.create_optimizer(cfg, labels, lambda step: 0.01)
  params = jax.tree.map(lambda p: jnp.asarray(rng.uniform(-0.9, 0.9, p.shape), jnp.float32),
                        parts.params)
  # Zero gradients: only weight decay moves parameters, and only the float kernels.
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  for (path, u), label, p in zip(jax.tree_util.tree_flatten_with_path(updates)[0],
                                 jax.tree.leaves(labels), jax.tree.leaves(params)):
    if label == "kernel":
      if name == "sgd":  # L2 added to the gradient, then -lr * g.
        np.testing.assert_allclose(u, -0.01 * 0.1 * p, rtol=1e-5)
      else:
        assert np.all(np.sign(u) == -np.sign(p)), jax.tree_util.keystr(path)
    else:
      np.testing.assert_array_equal(u, 0.0)
  # Huge gradients: binary kernels end exactly in [-1, 1]; float kernels are not clipped.
  grads = jax.tree.map(lambda p: jnp.asarray(rng.choice([-1e3, 1e3], p.shape), jnp.float32), params)
  big = optim.create_optimizer(cfg, labels, lambda step: 100.0)
  new = jax.tree.map(lambda p, u: p + u, params, big.update(grads, big.init(params), params)[0])
  maxima = {label: [] for label in optim.GROUPS}
  for label, p in zip(jax.tree.leaves(labels), jax.tree.leaves(new)):
    maxima[label].append(float(jnp.abs(p).max()))
  assert max(maxima["binary"]) == 1.0
  assert max(maxima["kernel"]) > 10.0
