"""Two tiny training runs shared by the evaluation and report tests (tests/experiments/test_evaluate.py,
tests/experiments/test_report.py): float `small_cnn` and XNOR `bin_small_cnn` on synthetic data, 12 steps each.

They are trained once per pytest session into its temporary directory (a marker file records a
finished run, so the second test module reuses the first one's runs).
"""

import os
import shutil

from experiments import trainer
from helpers import configs

MODELS = ("small_cnn", "bin_small_cnn")
NUM_TEST = 90       # not a multiple of the evaluation batch: the last batch is padded
NUM_VALIDATION = 64
EVAL_BATCH = 40


def tiny_config(model: str):
  """`configs.TINY` with 256 training images (2 epochs of 6 steps), evaluation per epoch."""
  return configs.tiny_config(model, {
      "data.synthetic_train_size": 256, "data.synthetic_test_size": NUM_TEST,
      "data.num_validation": NUM_VALIDATION, "eval_batch_size": EVAL_BATCH, "log_every_steps": 3,
      "tensorboard": False})


def trained_runs(tmp_path_factory) -> dict[str, str]:
  """{model name: work directory} of the two finished runs."""
  base = tmp_path_factory.getbasetemp() / "tiny_runs"
  runs = {}
  for model in MODELS:
    workdir = base / model
    marker = base / f"{model}.done"
    if not marker.exists():
      shutil.rmtree(workdir, ignore_errors=True)
      os.makedirs(workdir)
      trainer.train_and_evaluate(tiny_config(model), str(workdir))
      marker.write_text("done\n")
    runs[model] = str(workdir)
  return runs


def copy_run(workdir: str, destination, *, checkpoints: bool = True) -> str:
  """A copy of a run (optionally without its checkpoints) that a test may damage."""
  destination = str(destination)
  ignore = None if checkpoints else shutil.ignore_patterns("best", "checkpoints", "evaluation")
  shutil.copytree(workdir, destination, ignore=ignore)
  return destination
