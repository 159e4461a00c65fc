"""Builds one comparison report of training runs: a self-contained HTML page and a Markdown file.

  python -m experiments.report --workdirs=runs/vgg16,runs/bin_vgg16 --out=report/

For each run it reads only what training wrote (config.json, metrics.jsonl, checkpoints): the
learning curves come from metrics.jsonl; the confusion matrix and per-class table come from
evaluating the selected checkpoint (best on validation, as `experiments.evaluate`) on --split; the
model summary (`xnorjax.summary`) from the model that config.json builds. Writes into --out:

  index.html            everything, figures embedded as base64 PNGs (one file to mail or archive)
  report.md             the same in Markdown, referencing the PNG files beside it
  learning_rate.png, train_loss.png, eval_loss.png, accuracy.png    curves of all runs
  confusion_<run>.png   per run: counts and row-normalised
  report.json           the numbers: final metrics, per-class metrics, summaries, per run
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Optional, Sequence

from absl import app
from absl import flags
from absl import logging
import ml_collections
import numpy as np

import xnorjax
from experiments import cli
from experiments import configs
from experiments import evaluate
from experiments import plots
from experiments import report_render
from experiments import restore
from experiments import trainer
from xnorjax.summary import ModelSummary
from xnorjax.summary import format_bytes

CURVE_FILES = {"learning_rate": "learning_rate.png", "train_loss": "train_loss.png",
               "eval_loss": "eval_loss.png", "accuracy": "accuracy.png"}
HTML_FILE = "index.html"
MARKDOWN_FILE = "report.md"
JSON_FILE = "report.json"


@dataclasses.dataclass
class Run:
  """Everything the report shows about one work directory."""
  name: str
  workdir: str
  config: ml_collections.ConfigDict
  records: list[dict]
  evaluation: Optional[evaluate.Evaluation] = None
  summary: Optional[ModelSummary] = None

  def curve(self, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, values) of metric `key`; for a step logged twice (a resumed run) the last wins."""
    by_step = {}
    for r in self.records:
      if key in r and r[key] is not None:
        by_step[r["step"]] = (r.get("epoch", r["step"]), r[key])
    points = [by_step[s] for s in sorted(by_step)]
    return np.array([p[0] for p in points], float), np.array([p[1] for p in points], float)

  def last(self, key: str):
    """The value of `key` in the last record that has it, else None."""
    for r in reversed(self.records):
      if key in r and r[key] is not None:
        return r[key]
    return None

  def progress(self) -> str:
    """"finished" once training logged its final test metrics (it does so only on completing
    every step), else how far the run got of what its configuration plans: a report on a run
    under way, or interrupted, must not read as final."""
    if self.last("final_test_accuracy") is not None:
      return "finished"
    step, epoch = self.records[-1]["step"], self.last("epoch")
    if self.config.num_train_steps > 0:
      return f"unfinished: step {step} of {self.config.num_train_steps}"
    at_epoch = "" if epoch is None else f", epoch {epoch:.2f}"
    return f"unfinished: step {step}{at_epoch} of {self.config.num_epochs:g} epochs"


# ------------------------------------------------------------------------------------------------
# Collecting.
# ------------------------------------------------------------------------------------------------

def run_names(workdirs: Sequence[str]) -> list[str]:
  """Short unique names: the directory's base name, with parents added until unique."""
  parts = [os.path.normpath(os.path.abspath(w)).split(os.sep) for w in workdirs]
  depth = 1
  while True:
    names = ["/".join(p[-depth:]) for p in parts]
    if len(set(names)) == len(names) or depth >= max(map(len, parts)):
      return names
    depth += 1


def load_runs(workdirs: Sequence[str]) -> list[Run]:
  """Reads config.json and metrics.jsonl of every run and checks that they can be compared."""
  if not workdirs:
    raise ValueError("workdirs is empty: give one or more training work directories")
  if len(set(map(os.path.abspath, workdirs))) != len(workdirs):
    raise ValueError(f"workdirs lists a directory twice: {', '.join(workdirs)}")
  runs = [Run(name, os.path.abspath(w), restore.load_config(w), restore.read_metrics(w))
          for name, w in zip(run_names(workdirs), workdirs)]
  classes = {run.name: run.config.data.num_classes for run in runs}
  if len(set(classes.values())) > 1:
    raise ValueError("the runs have different numbers of classes (config.data.num_classes): "
                     + ", ".join(f"{n}: {c}" for n, c in classes.items())
                     + "; confusion matrices and per-class tables can only be compared on the "
                     "same classes")
  return runs


def input_shape(config) -> tuple[int, ...]:
  return (1, config.data.image_size, config.data.image_size, 3)


def complete_runs(runs: list[Run], split: str, checkpoint: str) -> list[Run]:
  """Adds each run's evaluation on `split` and its model summary."""
  for run in runs:
    logging.info("Evaluating %s (%s checkpoint) on the %s split", run.workdir, checkpoint, split)
    run.evaluation = evaluate.evaluate_workdir(run.workdir, split, checkpoint)
    model = trainer.create_model(run.config, run.config.seed)
    run.summary = xnorjax.summary(model, input_shape(run.config), print_fn=None)
  names = {run.name: run.evaluation.class_names for run in runs}
  if len(set(names.values())) > 1:
    raise ValueError("the runs' data sets have different classes: "
                     + "; ".join(f"{n}: {', '.join(c)}" for n, c in names.items()))
  return runs


# ------------------------------------------------------------------------------------------------
# Figures and numbers.
# ------------------------------------------------------------------------------------------------

def curve_figures(runs: Sequence[Run], split: str) -> dict:
  """The four learning-curve figures (matplotlib), keyed as CURVE_FILES."""
  del split  # Curves are what training logged: validation and test during training.

  def series(keys_styles):
    out = []
    for i, run in enumerate(runs):
      for key, label, style in keys_styles:
        x, y = run.curve(key)
        out.append((f"{run.name} {label}".strip(), x, y, dict(color=f"C{i % 10}", **style)))
    return out

  return {
      "learning_rate": plots.curves_figure(
          series([("learning_rate", "", {})]), title="Learning rate", ylabel="learning rate"),
      "train_loss": plots.curves_figure(
          series([("train_loss", "", {})]), title="Training loss (mean over each logging interval)",
          ylabel="cross-entropy"),
      "eval_loss": plots.curves_figure(
          series([("val_loss", "validation", {}), ("test_loss", "test", {"linestyle": "--"})]),
          title="Validation and test loss", ylabel="cross-entropy"),
      "accuracy": plots.curves_figure(
          series([("train_accuracy", "train", {"linestyle": ":", "alpha": 0.6}),
                  ("val_accuracy", "validation", {}), ("test_accuracy", "test", {"linestyle": "--"})]),
          title="Accuracy", ylabel="accuracy"),
  }


def final_metrics(runs: Sequence[Run], split: str) -> tuple[list[str], list[list[str]]]:
  """The side-by-side table: one row per quantity, one column per run."""

  def fmt(value, spec=".4f"):
    return "-" if value is None else format(value, spec)

  rows = []

  def add(label, values):
    rows.append([label, *values])

  add("model", [r.config.model.name for r in runs])
  add("training", [r.progress() for r in runs])
  add("checkpoint evaluated", [f"{r.evaluation.checkpoint}, step {r.evaluation.step}" for r in runs])
  add(f"{split} accuracy", [fmt(r.evaluation.metrics["accuracy"]) for r in runs])
  add(f"{split} loss", [fmt(r.evaluation.loss) for r in runs])
  add(f"{split} macro F1", [fmt(r.evaluation.metrics["macro_avg"]["f1"]) for r in runs])
  add(f"{split} weighted F1", [fmt(r.evaluation.metrics["weighted_avg"]["f1"]) for r in runs])
  add(f"{split} examples", [str(r.evaluation.metrics["num_examples"]) for r in runs])
  add("best validation accuracy (logged)",
      [fmt(r.curve("val_accuracy")[1].max()) if len(r.curve("val_accuracy")[1]) else "-"
       for r in runs])
  add("test accuracy of the selected checkpoint (logged at the end)",
      [fmt(r.last("final_test_accuracy")) for r in runs])
  add("last test accuracy logged during training", [fmt(r.last("test_accuracy")) for r in runs])
  add("last step / epoch", [f"{r.records[-1]['step']} / {fmt(r.last('epoch'), '.2f')}" for r in runs])
  add("last train loss", [fmt(r.last("train_loss")) for r in runs])
  add("last train accuracy", [fmt(r.last("train_accuracy")) for r in runs])
  add("median training images/s",
      [fmt(float(np.median(r.curve("images_per_second")[1])) if len(r.curve("images_per_second")[1])
           else None, ".1f") for r in runs])
  add("parameters (float + binary)", [f"{r.summary.params:,} ({r.summary.float_params:,} + "
                                      f"{r.summary.binary_params:,})" for r in runs])
  add("memory at 32 bits", [format_bytes(r.summary.memory_float32) for r in runs])
  add("memory, binary kernels packed", [format_bytes(r.summary.memory_packed) for r in runs])
  add("compression factor", [f"{r.summary.compression_factor:.2f}x" for r in runs])
  add("MACs per example (binary share)",
      [f"{r.summary.macs:,} ({100 * r.summary.binary_mac_fraction:.1f}%)" for r in runs])
  return ["", *[r.name for r in runs]], rows


def per_class_table(runs: Sequence[Run]) -> tuple[list[str], list[list[str]]]:
  """class | support | precision, recall, F1 of each run; macro and weighted averages last."""
  header = ["class", "support"]
  for r in runs:
    header += [f"{r.name} precision", f"{r.name} recall", f"{r.name} F1"]
  first = runs[0].evaluation.metrics
  keys = [(name, name) for name in first["per_class"]] + [("macro avg", "macro_avg"),
                                                          ("weighted avg", "weighted_avg")]
  rows = []
  for label, key in keys:
    supports = {(r.evaluation.metrics["per_class"].get(key) or r.evaluation.metrics[key])["support"]
                for r in runs}
    row = [label, "/".join(str(s) for s in sorted(supports))]
    for r in runs:
      m = r.evaluation.metrics["per_class"].get(key) or r.evaluation.metrics[key]
      row += [f"{m['precision']:.4f}", f"{m['recall']:.4f}", f"{m['f1']:.4f}"]
    rows.append(row)
  return header, rows


def config_differences(runs: Sequence[Run]) -> tuple[list[str], list[list[str]]]:
  """The configuration fields whose values differ between the runs."""
  flats = [_flatten(r.config.to_dict()) for r in runs]
  keys = sorted(set().union(*flats))
  rows = [[k, *[json.dumps(f.get(k, None)) for f in flats]] for k in keys
          if len({json.dumps(f.get(k, None), sort_keys=True) for f in flats}) > 1]
  return ["field", *[r.name for r in runs]], rows


def _flatten(d: dict) -> dict:
  return {k: list(v) if isinstance(v, tuple) else v for k, v in configs.flat_fields(d).items()}


def file_stem(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "run"


# ------------------------------------------------------------------------------------------------
# The report.
# ------------------------------------------------------------------------------------------------

def build_report(workdirs: Sequence[str], out: str, *, split: str = "test",
                 checkpoint: str = "best", title: Optional[str] = None) -> dict[str, str]:
  """Collects the runs, writes the report into `out`; returns {file name: path}."""
  if split not in evaluate.SPLITS:
    raise ValueError(f"split must be one of {', '.join(evaluate.SPLITS)}, got {split!r}")
  if checkpoint not in restore.CHECKPOINTS:
    raise ValueError(f"checkpoint must be one of {', '.join(restore.CHECKPOINTS)}, got {checkpoint!r}")
  runs = complete_runs(load_runs(workdirs), split, checkpoint)
  os.makedirs(out, exist_ok=True)
  title = title or "Training report: " + " vs ".join(r.name for r in runs)

  images = {}  # file name -> path
  for key, figure in curve_figures(runs, split).items():
    images[CURVE_FILES[key]] = plots.save_png(figure, os.path.join(out, CURVE_FILES[key]))
  confusion_files = {}
  for r in runs:
    name = f"confusion_{file_stem(r.name)}.png"
    confusion_files[r.name] = name
    images[name] = plots.save_png(evaluate.confusion_figure(r.evaluation), os.path.join(out, name))

  content = report_render.Content(
      title=title, split=split, runs=[(r.name, r.workdir) for r in runs],
      final=final_metrics(runs, split), curves=[CURVE_FILES[k] for k in CURVE_FILES],
      confusion=[(r.name, confusion_files[r.name]) for r in runs],
      per_class=per_class_table(runs), config_diff=config_differences(runs),
      summaries=[(r.name, r.summary) for r in runs],
      configs=[(r.name, r.config.to_json(indent=2, sort_keys=True)) for r in runs])
  paths = dict(images)
  paths[HTML_FILE] = os.path.join(out, HTML_FILE)
  with open(paths[HTML_FILE], "w", encoding="utf-8") as f:
    f.write(report_render.to_html(content, image_dir=out))
  paths[MARKDOWN_FILE] = os.path.join(out, MARKDOWN_FILE)
  with open(paths[MARKDOWN_FILE], "w", encoding="utf-8") as f:
    f.write(report_render.to_markdown(content))
  paths[JSON_FILE] = os.path.join(out, JSON_FILE)
  with open(paths[JSON_FILE], "w", encoding="utf-8") as f:
    json.dump({"title": title, "split": split, "runs": [{
        "name": r.name, "workdir": r.workdir, "evaluation": evaluate.to_json(r.evaluation),
        "summary": r.summary.to_dict()} for r in runs]}, f, indent=2)
  return paths


# ------------------------------------------------------------------------------------------------
# Command line.
# ------------------------------------------------------------------------------------------------

FLAGS = flags.FLAGS


def define_flags():
  """Flags, defined only when run as a program (see experiments/evaluate.py)."""
  flags.DEFINE_list("workdirs", None, "Comma-separated work directories of training runs.",
                    required=True)
  flags.DEFINE_string("out", None, "Output directory for index.html, report.md and the figures.",
                      required=True)
  flags.DEFINE_enum("split", "test", evaluate.SPLITS, "Split for confusion matrices and per-class "
                    "metrics.")
  flags.DEFINE_enum("checkpoint", "best", restore.CHECKPOINTS, "Checkpoint to evaluate (see "
                    "experiments.evaluate).")
  flags.DEFINE_string("title", None, "Page title (default: the run names).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  paths = build_report(FLAGS.workdirs, FLAGS.out, split=FLAGS.split, checkpoint=FLAGS.checkpoint,
                       title=FLAGS.title)
  print(f"Wrote {paths[HTML_FILE]} and {paths[MARKDOWN_FILE]} ({len(paths)} files in {FLAGS.out})")


if __name__ == "__main__":
  define_flags()
  cli.run_main(main)
