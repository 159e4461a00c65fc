"""Trains a model on CIFAR-10: a thin main around `experiments.trainer.train_and_evaluate`.

  python -m experiments.train --model=bin_vgg16 --workdir=runs/bin_vgg16
  python -m experiments.train --model=vgg16 --workdir=runs/vgg16 --config.num_epochs=3
  python -m experiments.train --config=experiments/configs/bin_nin.py --workdir=runs/bin_nin

`--model` picks the preset experiments/configs/<model>.py (or, for a registered model without a
preset, experiments/configs/default.py:<model>); `--config` names a config file instead. Every
field can be overridden as --config.<field>=<value>. Rerunning the same command resumes from the
newest checkpoint in the work directory.
"""

import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from experiments import cli
from experiments import configs
from experiments import huge_pages
from experiments import input_pipeline
from experiments import trainer

_CONFIGS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
DEFAULT_MODEL = "bin_vgg16"


def _model_from_argv(argv) -> str:
  """The --model value on the command line (needed before flag parsing: it picks --config's default)."""
  for i, arg in enumerate(argv):
    if arg.startswith(("--model=", "-model=")):
      return arg.split("=", 1)[1]
    if arg in ("--model", "-model") and i + 1 < len(argv):
      return argv[i + 1]
  return DEFAULT_MODEL


def preset_path(model: str) -> str:
  """The config file for `model`: its preset, else default.py with the model name as argument."""
  preset = os.path.join(_CONFIGS_DIR, f"{model}.py")
  if model != "default" and os.path.isfile(preset):
    return preset
  return f"{os.path.join(_CONFIGS_DIR, 'default.py')}:{model}"


_MODEL = flags.DEFINE_string(
    "model", DEFAULT_MODEL, "Model preset (experiments/configs/<model>.py); ignored with --config.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for config.json, metrics.jsonl, "
                               "TensorBoard events and checkpoints.", required=True)
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False, "Resume a work directory's checkpoints even though the "
    "configuration differs from its config.json in a field that changes what is trained.")
try:  # Overrides of the default config are checked here, at definition.
  _CONFIG = config_flags.DEFINE_config_file(
      "config", preset_path(_model_from_argv(sys.argv)),
      "Training configuration file; fields can be overridden as --config.<field>=<value>.",
      lock_config=True)
except (AttributeError, KeyError, TypeError, ValueError) as e:
  _message = " ".join(str(e).replace("\\n", " ").replace("\\", "").replace("'", "").split())
  sys.exit(f"error: bad --config override: no field {_message}")


def check_command_line(config, workdir: str):
  """Rejects settings that cannot be run and a --workdir that cannot hold a run, before any data
  or model is loaded."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ValueError(f"--workdir={workdir!r} is a file, not a directory")
  configs.check_settings(config)
  input_pipeline.check_data_config(config.data)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  config = _CONFIG.value
  if config is None or not hasattr(config, "model"):
    raise app.UsageError(f"could not load the configuration for --model={_MODEL.value}")
  if _MODEL.present and any(a.startswith(("--config=", "-config=")) or a in ("--config", "-config")
                            for a in sys.argv) and config.model.name != _MODEL.value:
    raise app.UsageError(f"--model={_MODEL.value} contradicts the config file's model "
                         f"{config.model.name!r}; give one of them")
  check_command_line(config, _WORKDIR.value)
  results = trainer.train_and_evaluate(config, _WORKDIR.value,
                                       allow_config_change=_ALLOW_CONFIG_CHANGE.value)
  if results.get("interrupted_by"):
    print(f"Interrupted by {results['interrupted_by']} after step {results['last_step']}; "
          f"checkpoint saved. Rerun the same command to resume.")
  else:
    print(f"{results['model']}: test accuracy {results['test_accuracy']:.4f} (checkpoint of step "
          f"{results['best_step']}, chosen on validation accuracy {results['best_val_accuracy']}); "
          f"last step {results['last_step']}: test accuracy {results['test_accuracy_last']:.4f}")


if __name__ == "__main__":
  huge_pages.reexec_with_huge_pages()
  cli.run_main(main)
