"""Two-stage training (experiments/two_stage.py): the stage configurations, a tiny two-stage run
whose stage 2 starts from stage 1's selected checkpoint, and the errors for unsuitable models."""

import json
import os

from flax import nnx
import jax
import numpy as np
import pytest

from experiments import restore
from experiments import trainer
from experiments import two_stage
from xnorjax import models
from xnorjax import optim as xnorjax_optim

from helpers import tiny_runs


def _config():
  config = tiny_runs.tiny_config("bin_small_cnn")
  config.num_epochs = 1
  config.two_stage = True
  config.lock()  # as the command line gives it
  return config


def test_stage_configurations():
  stage1, stage2 = two_stage.stage_configs(_config(), "runs/x")
  assert stage1.model.options.kernel_quantizer is None and not stage1.two_stage
  assert stage1.optim.binary_optimizer == "" and stage1.init_from_workdir == ""
  assert "kernel_quantizer" not in stage2.model.options and not stage2.two_stage
  assert stage2.init_from_workdir == os.path.abspath("runs/x/stage1")
  float_config = tiny_runs.tiny_config("small_cnn")
  with pytest.raises(ValueError, match="needs a binary model with a kernel_quantizer option.*'small_cnn'"):
    two_stage.stage_configs(float_config, "runs/x")


def test_tiny_two_stage_run(tmp_path, monkeypatch):
  captured = {}
  real_initial_weights = two_stage.initial_weights

  def capture(workdir, params, rest):
    captured["workdir"] = workdir
    captured["params"] = real_initial_weights(workdir, params, rest)[0]
    captured["fresh"] = params
    return real_initial_weights(workdir, params, rest)

  monkeypatch.setattr(two_stage, "initial_weights", capture)
  workdir = str(tmp_path / "run")
  results = trainer.train_and_evaluate(_config(), workdir)
  assert results["last_step"] == 6 and results["stage1"]["last_step"] == 6
  stage1_dir, stage2_dir = (os.path.join(workdir, d) for d in two_stage.STAGE_DIRS)
  with open(os.path.join(stage1_dir, trainer.CONFIG_FILE)) as f:
    assert json.load(f)["model"]["options"]["kernel_quantizer"] is None
  for d in (stage1_dir, stage2_dir):
    assert os.path.isfile(os.path.join(d, trainer.RESULTS_FILE))
  # Stage 1 trained float weights under binary activations; stage 2 binary ones, from stage 1.
  stage1 = restore.restore_model(stage1_dir)
  assert sum(jax.tree.leaves(xnorjax_optim.binary_kernel_mask(stage1.model))) == 0
  assert captured["workdir"] == stage1_dir
  want = nnx.to_pure_dict(nnx.state(stage1.model, nnx.Param))
  jax.tree.map(np.testing.assert_array_equal, captured["params"], want)
  assert not all(np.array_equal(a, b) for a, b in
                 zip(jax.tree.leaves(captured["fresh"]), jax.tree.leaves(want)))
  # The trainer starts from them: one step at a vanishing learning rate keeps stage 1's parameters.
  still = tiny_runs.tiny_config("bin_small_cnn")
  still.init_from_workdir, still.num_train_steps = stage1_dir, 1
  still.optim.name, still.optim.learning_rate, still.optim.warmup_epochs = "sgd", 1e-30, 0.0
  still.optim.weight_decay, still.optim.clip_latent_weights = 0.0, 0.0
  after = trainer.train_and_evaluate(still, str(tmp_path / "still"))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(after["state"]["params"]), want)
  stage2 = restore.restore_model(stage2_dir)
  assert sum(jax.tree.leaves(xnorjax_optim.binary_kernel_mask(stage2.model))) == 2
  # Another model's checkpoint is refused by name.
  other = trainer.split_model(models.create_model("small_cnn", width=0.25, rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match=r"config.init_from_workdir=.*stage1.*\(bin_small_cnn\) has "
                     r"other parameters"):
    real_initial_weights(stage1_dir, other.params, other.rest)
