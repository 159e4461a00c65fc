"""Knowledge distillation (experiments/distill.py): the loss against numpy and its closed-form
gradient, the teacher as an argument of the jitted step, a tiny distilled run, and the errors for a
teacher work directory without checkpoints or with another number of classes."""

import functools
import json
import os

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import distill
from experiments import optim
from experiments import restore
from experiments import trainer
from xnorjax import models

from helpers import tiny_runs


def _softmax(z):
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


def _numpy_loss(s, t, labels, alpha, temperature):
  s, t = np.asarray(s, np.float64), np.asarray(t, np.float64)
  ce = -np.log(_softmax(s)[np.arange(len(labels)), labels])
  p_t, p_s = _softmax(t / temperature), _softmax(s / temperature)
  kl = np.sum(p_t * (np.log(p_t) - np.log(p_s)), -1)
  return (1 - alpha) * ce + alpha * temperature ** 2 * kl, temperature ** 2 * kl


@pytest.mark.parametrize("alpha,temperature", [(0.9, 4.0), (0.5, 1.0), (1.0, 2.5), (0.0, 3.0)])
def test_distillation_loss_matches_numpy(rng, alpha, temperature):
  s = jnp.asarray(3 * rng.normal(size=(7, 10)), jnp.float32)
  t = jnp.asarray(3 * rng.normal(size=(7, 10)), jnp.float32)
  labels = rng.integers(0, 10, 7)
  ce = trainer.cross_entropy(s, jnp.asarray(labels))
  loss, soft = distill.distillation_loss(s, t, ce, weight=alpha, temperature=temperature)
  want_loss, want_soft = _numpy_loss(s, t, labels, alpha, temperature)
  np.testing.assert_allclose(loss, want_loss, rtol=2e-5, atol=1e-6)
  np.testing.assert_allclose(soft, want_soft, rtol=2e-5, atol=1e-6)
  assert np.all(np.asarray(soft) > 0)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_distillation_gradient_closed_form(rng, temperature):
  s = jnp.asarray(2 * rng.normal(size=(5, 6)), jnp.float32)
  t = jnp.asarray(2 * rng.normal(size=(5, 6)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 6, 5))
  alpha = 0.7

  def soft_term(s, t):
    return jnp.sum(distill.distillation_loss(s, t, jnp.zeros(5), weight=1.0,
                                             temperature=temperature)[0])

  p_s, p_t = _softmax(np.asarray(s, np.float64) / temperature), _softmax(np.asarray(t, np.float64) / temperature)
  grad_s, grad_t = jax.grad(soft_term, argnums=(0, 1))(s, t)
  np.testing.assert_allclose(grad_s, (p_s - p_t) * temperature, rtol=1e-4, atol=1e-6)
  np.testing.assert_array_equal(grad_t, 0.0)  # no gradient into the teacher

  def total(s):
    ce = trainer.cross_entropy(s, labels)
    return jnp.sum(distill.distillation_loss(s, t, ce, weight=alpha, temperature=temperature)[0])

  hard = _softmax(np.asarray(s, np.float64)) - np.eye(6)[np.asarray(labels)]
  np.testing.assert_allclose(jax.grad(total)(s), (1 - alpha) * hard + alpha * temperature * (p_s - p_t),
                             rtol=1e-4, atol=1e-6)


def test_the_teacher_is_an_argument_of_the_jitted_step(rng):
  """Other teacher weights change the loss without a recompilation: not baked in as constants."""
  student = trainer.split_model(models.create_model("bin_small_cnn", width=0.125, rngs=nnx.Rngs(0)))
  teacher_model = models.create_model("small_cnn", width=0.125, rngs=nnx.Rngs(1))
  teacher_model.eval()
  t_graphdef, t_params, t_rest = nnx.split(teacher_model, nnx.Param, ...)
  teacher_state = {"params": nnx.to_pure_dict(t_params), "rest": nnx.to_pure_dict(t_rest)}
  cfg = tiny_runs.tiny_config("bin_small_cnn").optim
  tx = optim.create_optimizer(cfg, optim.param_labels(student.params, student.binary_mask),
                              lambda step: 0.0)
  step = jax.jit(functools.partial(
      trainer.train_step, graphdef=student.train_graphdef, tx=tx, mean=jnp.zeros(3),
      std=jnp.ones(3), label_smoothing=0.0, teacher_graphdef=t_graphdef, distill_weight=1.0,
      distill_temperature=2.0))
  images = jnp.asarray(rng.integers(0, 256, (4, 32, 32, 3)), jnp.uint8)
  labels = jnp.asarray(rng.integers(0, 10, 4))

  def run(ts):
    state = {"params": student.params, "rest": student.rest, "opt_state": tx.init(student.params)}
    return step(state, images, labels, teacher_state=ts)[1]

  first = run(teacher_state)
  other = run(jax.tree.map(lambda x: 3.0 * x, teacher_state))
  assert step._cache_size() == 1
  assert float(first["distill_loss"]) != float(other["distill_loss"])
  assert float(first["loss"]) == pytest.approx(float(first["distill_loss"]))  # weight 1


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
  return tiny_runs.trained_runs(tmp_path_factory)["small_cnn"]


def _student_config(teacher_workdir, weight=0.5, temperature=2.0):
  config = tiny_runs.tiny_config("bin_small_cnn")
  config.distill.teacher_workdir = teacher_workdir
  config.distill.weight = weight
  config.distill.temperature = temperature
  return config


def test_tiny_run_distills_from_a_tiny_teacher(teacher_run, tmp_path):
  workdir = str(tmp_path / "student")
  results = trainer.train_and_evaluate(_student_config(teacher_run), workdir)
  assert results["interrupted_by"] is None and results["last_step"] == 12
  records = [r for r in restore.read_metrics(workdir) if "train_loss" in r]
  assert [r["step"] for r in records] == [3, 6, 9, 12]
  for r in records:
    assert np.isfinite(r["train_distill_loss"]) and r["train_distill_loss"] > 0
    # The logged loss is the mix of the logged terms (each a mean over the same steps).
    assert r["train_loss"] == pytest.approx(0.5 * r["train_ce_loss"] + 0.5 * r["train_distill_loss"],
                                            rel=1e-5)
  assert records[-1]["train_distill_loss"] < records[0]["train_distill_loss"]


def test_teacher_without_checkpoint_or_with_other_classes_is_refused(teacher_run, tmp_path):
  empty = tiny_runs.copy_run(teacher_run, tmp_path / "no_checkpoints", checkpoints=False)
  with pytest.raises(FileNotFoundError, match=r"config.distill.teacher_workdir=.*no_checkpoints.*"
                     r"has no checkpoint"):
    trainer.train_and_evaluate(_student_config(empty), str(tmp_path / "a"))
  with pytest.raises(FileNotFoundError, match=r"config.distill.teacher_workdir=.*is not a directory"):
    trainer.train_and_evaluate(_student_config(str(tmp_path / "missing")), str(tmp_path / "b"))
  other = tiny_runs.copy_run(teacher_run, tmp_path / "five_classes")
  path = os.path.join(other, trainer.CONFIG_FILE)
  with open(path) as f:
    saved = json.load(f)
  saved["data"]["num_classes"] = 5
  with open(path, "w") as f:
    json.dump(saved, f)
  with pytest.raises(ValueError, match=r"teacher \(small_cnn\) was trained with data.num_classes=5, "
                     r"the student has data.num_classes=10"):
    trainer.train_and_evaluate(_student_config(other), str(tmp_path / "c"))


@pytest.mark.parametrize("field,value,message", [
    ("weight", 1.5, r"config.distill.weight \(alpha\) must be in \[0, 1\], got 1.5"),
    ("temperature", 0.0, r"config.distill.temperature must be positive, got 0.0"),
])
def test_distill_settings_are_checked(field, value, message):
  config = _student_config("")
  config.distill[field] = value
  with pytest.raises(ValueError, match=message):
    trainer.check_config(config, 1)
