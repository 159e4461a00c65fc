"""Short-schedule ablation of the binary training methods: one row per method, same seeds and epochs.

  python -m experiments.ablation --workdir=$HOME/ablation --base=bin_resnet18 --epochs=4 \
      --seeds=0,1 --methods=baseline,bop,distill,two_stage,reactnet

Each method is the base preset (`--base`) changed in one respect:
  baseline    the preset's own recipe;
  bop         Bop for the binary kernels (config.optim.binary_optimizer=bop; xnorjax/bop.py);
  distill     knowledge distillation (experiments/distill.py) from the float run in
              --teacher_workdir, or, without one, from `--teacher` trained first for
              --teacher_epochs into <workdir>/teacher;
  two_stage   Real-to-Binary / ReActNet two-stage training (experiments/two_stage.py), each stage
              half of --epochs, so that every row trains for the same number of epochs;
  reactnet    the model bin_reactnet18 (RSign / RPReLU units; xnorjax/nn/react.py) with the base
              preset's recipe; meaningful against the bin_resnet18 base, whose units it extends.
Every run trains into <workdir>/<method>/seed<seed> with `--config_overrides` (field=value, e.g.
the data source) applied to all of them, the teacher included. Rerunning the command resumes the
unfinished runs and re-reads the finished ones, so a long ablation may be run in parts; a
SIGTERM / SIGINT stops after the run in progress has saved its checkpoint.

The table (<workdir>/ablation.md, and every run's numbers in ablation.json): test accuracy of the
checkpoint selected on validation per seed, their mean and spread (max - min), the mean validation
accuracy, and the wall time this command spent on each method's runs.
"""

from __future__ import annotations

import inspect
import json
import os
import time

from absl import flags
from absl import logging
import numpy as np

from experiments import cli
from experiments import configs
from experiments import trainer
from xnorjax import models

METHODS = ("baseline", "bop", "distill", "two_stage", "reactnet")
TABLE_FILE = "ablation.md"
RUNS_FILE = "ablation.json"
WALL_FILE = "ablation_wall_seconds.json"  # in each run's work directory, summed over invocations

def parse_seeds(items) -> list[int]:
  try:
    seeds = [int(s) for s in items]
  except ValueError:
    raise ValueError(f"--seeds: {','.join(items)!r} is not a list of integers") from None
  if not seeds or len(set(seeds)) != len(seeds):
    raise ValueError(f"--seeds: {','.join(items)!r} must name one or more different seeds")
  return seeds


def check_methods(methods) -> list[str]:
  unknown = [m for m in methods if m not in METHODS]
  if unknown or not methods:
    raise ValueError(f"--methods: {','.join(unknown) or 'none given'}: choose from "
                     f"{', '.join(METHODS)}")
  return list(dict.fromkeys(methods))


def run_config(method: str, base: str, epochs: float, seed: int, overrides, teacher_workdir=""):
  """The configuration of one row's run: `base` changed as `method` says (module docstring)."""
  if not epochs > 0:
    raise ValueError(f"--epochs={epochs} must be > 0")
  model = "bin_reactnet18" if method == "reactnet" else base
  config = configs.with_overrides(configs.preset(base), overrides, argument="--config_overrides")
  if model != config.model.name:  # reactnet: options the base has and bin_reactnet18 fixes
    accepted = inspect.signature(models.get_model_fn(model)).parameters
    with config.unlocked():
      for name in [n for n, v in config.model.options.items() if n not in accepted and not v]:
        del config.model.options[name]  # binarize_first_layer / _last_layer=False: float there
    config.model.name = model
  config.seed = seed
  _set_epochs(config, epochs / 2 if method == "two_stage" else epochs)
  if method == "bop":
    config.optim.binary_optimizer = "bop"
  elif method == "distill":
    config.distill.teacher_workdir = teacher_workdir
  elif method == "two_stage":
    config.two_stage = True
  return config


def teacher_config(teacher: str, epochs: float, overrides):
  config = configs.with_overrides(configs.preset(teacher), overrides, argument="--config_overrides")
  _set_epochs(config, epochs)
  return config


def _set_epochs(config, epochs: float):
  """config.num_epochs = epochs (an int where whole: the presets' type), num_train_steps unset."""
  with config.ignore_type():
    config.num_epochs = int(epochs) if float(epochs).is_integer() else float(epochs)
  config.num_train_steps = -1


def timed_run(config, workdir: str) -> dict:
  """trainer.train_and_evaluate, its wall time added to the run's WALL_FILE; the results with
  "wall_seconds" (all invocations), without the state."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, WALL_FILE)
  spent = 0.0
  if os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      spent = json.load(f)["seconds"]
  start = time.monotonic()
  try:
    results = trainer.train_and_evaluate(config, workdir)
  finally:
    spent += time.monotonic() - start
    with open(path, "w", encoding="utf-8") as f:
      json.dump({"seconds": spent}, f)
  results = {k: v for k, v in results.items() if k != "state"}
  results["wall_seconds"] = spent
  return results


def summarize(runs: list[dict], methods, seeds) -> list[dict]:
  """One row per method with finished runs: test accuracy per seed, mean, spread, mean
  validation accuracy, summed wall time."""
  rows = []
  for method in methods:
    done = [r for r in runs if r["method"] == method and not r.get("interrupted_by")]
    if not done:
      continue
    test = [r["test_accuracy"] for r in done]
    val = [r["best_val_accuracy"] for r in done if r.get("best_val_accuracy") is not None]
    rows.append({
        "method": method, "model": done[0]["model"], "epochs": done[0]["epochs"],
        "seeds": [r["seed"] for r in done], "test_accuracy": test,
        "mean_test_accuracy": float(np.mean(test)), "spread": float(np.max(test) - np.min(test)),
        "mean_val_accuracy": float(np.mean(val)) if val else None,
        "wall_minutes": sum(r["wall_seconds"] for r in done) / 60,
        "complete": len(done) == len(seeds)})
  return rows


def markdown(rows: list[dict], base: str) -> str:
  lines = [f"Ablation on {base}: test accuracy of the checkpoint selected on validation.", "",
           "| method | model | epochs | seeds | test accuracy per seed | mean | spread | "
           "mean val accuracy | wall time (min) |", "|" + "---|" * 9]
  for r in rows:
    per_seed = ", ".join(f"{100 * a:.2f}" for a in r["test_accuracy"])
    val = "" if r["mean_val_accuracy"] is None else f"{100 * r['mean_val_accuracy']:.2f}"
    lines.append(f"| {r['method']} | {r['model']} | {r['epochs']:g} | "
                 f"{','.join(map(str, r['seeds']))}{'' if r['complete'] else ' (so far)'} | "
                 f"{per_seed} | {100 * r['mean_test_accuracy']:.2f} | {100 * r['spread']:.2f} | "
                 f"{val} | {r['wall_minutes']:.1f} |")
  return "\n".join(lines) + "\n"


def run_ablation(workdir: str, *, base: str, epochs: float, seeds, methods, overrides=(),
                 teacher: str = "vgg16", teacher_epochs: float = 0.0,
                 teacher_workdir: str = "") -> list[dict]:
  """Trains (or resumes, or re-reads) every run; writes and returns the table's rows."""
  methods, seeds = check_methods(methods), parse_seeds([str(s) for s in seeds])
  workdir = os.path.abspath(workdir)
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise NotADirectoryError(f"--workdir={workdir!r} is a file")
  plans = [(m, s, run_config(m, base, epochs, s, overrides)) for m in methods for s in seeds]
  if "distill" in methods and not teacher_workdir:
    teacher_workdir = os.path.join(workdir, "teacher")
    logging.info("Training the teacher %s into %s", teacher, teacher_workdir)
    done = timed_run(teacher_config(teacher, teacher_epochs or epochs, overrides), teacher_workdir)
    if done.get("interrupted_by"):
      return []
  runs = []
  for method, seed, config in plans:
    if method == "distill":
      config.distill.teacher_workdir = teacher_workdir
    run_dir = os.path.join(workdir, method, f"seed{seed}")
    logging.info("Ablation run %s, seed %d, into %s", method, seed, run_dir)
    results = timed_run(config, run_dir)
    runs.append({"method": method, "seed": seed, "epochs": epochs, "workdir": run_dir, **results})
    with open(os.path.join(workdir, RUNS_FILE), "w", encoding="utf-8") as f:
      json.dump(runs, f, indent=2)
    rows = summarize(runs, methods, seeds)
    with open(os.path.join(workdir, TABLE_FILE), "w", encoding="utf-8") as f:
      f.write(markdown(rows, base))
    if results.get("interrupted_by"):
      logging.warning("Stopped by %s; rerun the same command to continue", results["interrupted_by"])
      break
  return summarize(runs, methods, seeds)


def define_flags():
  """The command's flags, defined only when it runs (--workdir is also experiments.train's)."""
  global _WORKDIR, _BASE, _EPOCHS, _SEEDS, _METHODS, _TEACHER, _TEACHER_EPOCHS, _TEACHER_WORKDIR
  global _OVERRIDES
  _WORKDIR = flags.DEFINE_string("workdir", None, "Root directory of the ablation's runs.")
  _BASE = flags.DEFINE_string("base", "bin_resnet18", "Base preset (experiments/configs/<base>.py).")
  _EPOCHS = flags.DEFINE_float("epochs", 4.0, "Training epochs of every row.")
  _SEEDS = flags.DEFINE_list("seeds", ["0", "1"], "Seeds; two or more give the run-to-run spread.")
  _METHODS = flags.DEFINE_list("methods", list(METHODS), f"Rows, from {', '.join(METHODS)}.")
  _TEACHER = flags.DEFINE_string("teacher", "vgg16", "distill: the float preset trained as teacher "
                                 "when --teacher_workdir is not given.")
  _TEACHER_EPOCHS = flags.DEFINE_float("teacher_epochs", 0.0, "distill: the teacher's epochs "
                                       "(0: --epochs).")
  _TEACHER_WORKDIR = flags.DEFINE_string("teacher_workdir", "", "distill: a finished float run.")
  _OVERRIDES = flags.DEFINE_list("config_overrides", [], "field=value items set on every run's "
                                 "config, e.g. data.path=cifar10-jpeg.tar.gz,batch_size=64.")


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not _WORKDIR.value:
    raise ValueError("--workdir is required (keep it outside the checkout, e.g. under $HOME)")
  rows = run_ablation(_WORKDIR.value, base=_BASE.value, epochs=_EPOCHS.value, seeds=_SEEDS.value,
                      methods=_METHODS.value, overrides=_OVERRIDES.value, teacher=_TEACHER.value,
                      teacher_epochs=_TEACHER_EPOCHS.value, teacher_workdir=_TEACHER_WORKDIR.value)
  print(markdown(rows, _BASE.value), end="")


if __name__ == "__main__":
  define_flags()
  cli.run_main(main)
