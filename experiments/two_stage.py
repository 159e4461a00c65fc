"""Two-stage training of a binary network (Real-to-Binary, Martinez et al. 2020; ReActNet):

  stage 1  binary activations, real-valued weights (the model with kernel_quantizer=None);
  stage 2  binary activations and weights (the configured model), initialised from stage 1's
           selected checkpoint (parameters and BatchNorm statistics).

  python -m experiments.train --model=bin_reactnet18 --workdir=runs/bin_reactnet18_2stage \
      --config.two_stage=True

Each stage trains for the configuration's schedule (config.num_epochs each, as the papers) into
<workdir>/stage1 and <workdir>/stage2; rerunning the command resumes whichever stage is unfinished.
Stage 1 has no binary kernels, so it trains every parameter with config.optim.name (a Bop setting
applies to stage 2 only).
"""

from __future__ import annotations

import os

from absl import logging
from flax import nnx
import jax
import ml_collections

from xnorjax import models

STAGE_DIRS = ("stage1", "stage2")


def stage_configs(config: ml_collections.ConfigDict, workdir: str):
  """The (stage 1, stage 2) configurations of `config` for a two-stage run in `workdir`."""
  models.check_options(config.model.name, {})  # Unknown model: its own clear error.
  accepted = models.get_model_fn(config.model.name).__code__.co_varnames
  if "kernel_quantizer" not in accepted:
    raise ValueError(f"config.two_stage=True needs a binary model with a kernel_quantizer option "
                     f"(stage 1 trains it with float weights); {config.model.name!r} has none")
  stage1 = config.copy_and_resolve_references()
  stage1.two_stage = False
  with stage1.unlocked():  # The options may not name kernel_quantizer (its default) yet.
    stage1.model.options.kernel_quantizer = None
  stage1.optim.binary_optimizer = ""
  stage2 = config.copy_and_resolve_references()
  stage2.two_stage = False
  stage2.init_from_workdir = os.path.join(os.path.abspath(workdir), STAGE_DIRS[0])
  return stage1, stage2


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, **kwargs) -> dict:
  """Both stages (`experiments.trainer.train_and_evaluate` twice); stage 2's results, with stage
  1's under "stage1". An interrupted stage 1 returns its own results (stage 2 not started)."""
  from experiments import trainer  # Local: the trainer calls this module for config.two_stage.

  stage1, stage2 = stage_configs(config, workdir)
  dirs = [os.path.join(workdir, d) for d in STAGE_DIRS]
  logging.info("Two-stage training, stage 1 (binary activations, float weights) in %s", dirs[0])
  first = trainer.train_and_evaluate(stage1, dirs[0], **kwargs)
  if first.get("interrupted_by"):
    return first
  logging.info("Stage 2 (binary activations and weights, from stage 1) in %s", dirs[1])
  second = trainer.train_and_evaluate(stage2, dirs[1], **kwargs)
  second["stage1"] = {k: v for k, v in first.items() if k != "state"}
  return second


def initial_weights(workdir: str, params, rest):
  """The parameters and other variables (BatchNorm statistics) of the selected checkpoint of the
  run in `workdir`, checked to have the structure and shapes of `params` and `rest`."""
  from experiments import restore  # Local: restore imports the trainer.

  restored = restore.restore_model(workdir)
  _, new_params, new_rest = nnx.split(restored.model, nnx.Param, ...)
  new_params, new_rest = nnx.to_pure_dict(new_params), nnx.to_pure_dict(new_rest)
  for name, want, have in (("parameters", params, new_params), ("variables", rest, new_rest)):
    if jax.tree.structure(want) != jax.tree.structure(have):
      raise ValueError(f"config.init_from_workdir={workdir!r}: its model "
                       f"({restored.config.model.name}) has other {name} than this one")
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(have)):
      if getattr(a, "shape", None) != getattr(b, "shape", None):
        raise ValueError(f"config.init_from_workdir={workdir!r}: a {name[:-1]} of shape "
                         f"{getattr(b, 'shape', None)} where this model has {getattr(a, 'shape', None)}")
  logging.info("Initialised from %s (%s checkpoint, step %d)", workdir, restored.checkpoint,
               restored.step)
  return new_params, new_rest
