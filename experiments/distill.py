"""Knowledge distillation from a float teacher (Hinton et al. 2015), as ReActNet trains with.

  python -m experiments.train --model=bin_reactnet18 --workdir=runs/bin_reactnet18 \
      --config.distill.teacher_workdir=runs/resnet18 --config.distill.weight=1.0

The student's per-example loss, with alpha = config.distill.weight and T = config.distill.temperature:

  loss = (1 - alpha) * CE(student, labels) + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))

T^2 keeps the soft term's gradient on the scale of the hard one's (d/ds of T^2 KL is
T * (softmax(s / T) - softmax(t / T))). alpha = 1 is ReActNet's distributional loss (T = 1, no
labels). The teacher is the selected checkpoint (best on validation, else the latest) of a
training run's work directory, run in eval mode inside the train step; it sees the student's
normalised images, so it should have been trained on the same data (a differing data fingerprint
is logged as a warning).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import optax


@dataclasses.dataclass(frozen=True)
class Teacher:
  """A restored teacher split for the jitted train step: its graph definition is static, its
  variables (`state`, {"params", "rest"}) are passed to the step as an argument."""
  graphdef: Any
  state: Any
  model_name: str
  checkpoint: str   # "best" or "latest" and the step, for the log


def check_config(cfg: ml_collections.ConfigDict) -> None:
  """Clear errors for config.distill's weight and temperature (distillation is on when
  config.distill.teacher_workdir is set)."""
  if not 0.0 <= cfg.weight <= 1.0:
    raise ValueError(f"config.distill.weight (alpha) must be in [0, 1], got {cfg.weight}")
  if not cfg.temperature > 0:
    raise ValueError(f"config.distill.temperature must be positive, got {cfg.temperature}")


def kl_divergence(student_logits, teacher_logits, temperature: float) -> jax.Array:
  """Per-example KL(softmax(teacher / T) || softmax(student / T)), in float32."""
  log_p_student = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
  log_p_teacher = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
  return optax.losses.kl_divergence_with_log_targets(log_p_student, log_p_teacher)


def distillation_loss(student_logits, teacher_logits, cross_entropy, *, weight: float,
                      temperature: float) -> tuple[jax.Array, jax.Array]:
  """(per-example loss, per-example soft term T^2 * KL) of the module docstring.

  Args:
    student_logits, teacher_logits: (..., classes); the teacher's gradient is stopped.
    cross_entropy: the per-example hard-label loss of the student (e.g. `trainer.cross_entropy`,
      with its label smoothing).
    weight: alpha in [0, 1]; temperature: T > 0.
  """
  soft = temperature ** 2 * kl_divergence(student_logits, jax.lax.stop_gradient(teacher_logits),
                                          temperature)
  return (1.0 - weight) * cross_entropy + weight * soft, soft


def teacher_logits(teacher_graphdef, teacher_state, inputs) -> jax.Array:
  """The eval-mode teacher's logits on already normalised inputs (no gradient)."""
  model = nnx.merge(teacher_graphdef, teacher_state["params"], teacher_state["rest"])
  return jax.lax.stop_gradient(model(inputs))


def load_teacher(config: ml_collections.ConfigDict, data_fingerprint: str) -> Teacher:
  """The teacher named by config.distill.teacher_workdir, checked against the student's data.

  Raises:
    FileNotFoundError: the teacher workdir is not a training run's, or has no checkpoint.
    ValueError: its number of classes or image size differs from the student's.
  """
  from experiments import restore  # Local: restore imports the trainer, which imports this module.

  workdir = config.distill.teacher_workdir
  try:
    teacher_config = restore.load_config(workdir)
  except FileNotFoundError as e:
    raise FileNotFoundError(f"config.distill.teacher_workdir={workdir!r}: {e}") from e
  for field in ("num_classes", "image_size"):
    theirs, ours = teacher_config.data[field], config.data[field]
    if theirs != ours:
      raise ValueError(f"config.distill.teacher_workdir={workdir!r}: the teacher "
                       f"({teacher_config.model.name}) was trained with data.{field}={theirs}, the "
                       f"student has data.{field}={ours}")
  try:
    restored = restore.restore_model(workdir, "best", teacher_config)
  except FileNotFoundError as e:
    raise FileNotFoundError(f"config.distill.teacher_workdir={workdir!r}: {e}") from e
  saved = restored.record.get("data_fingerprint")
  if saved is not None and saved != data_fingerprint:
    logging.warning("The teacher in %s was trained on other data (fingerprint %s) than the student "
                    "(%s); its logits are computed on the student's normalised images", workdir,
                    saved, data_fingerprint)
  graphdef, params, rest = nnx.split(restored.model, nnx.Param, ...)
  return Teacher(graphdef, {"params": nnx.to_pure_dict(params), "rest": nnx.to_pure_dict(rest)},
                 teacher_config.model.name, f"{restored.checkpoint} checkpoint, step {restored.step}")
