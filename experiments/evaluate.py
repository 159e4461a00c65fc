"""Evaluates a training run's selected checkpoint on a data split: loss, accuracy, confusion matrix,
per-class precision / recall / F1.

  python -m experiments.evaluate --workdir=runs/bin_vgg16
  python -m experiments.evaluate --workdir=runs/bin_vgg16 --split=validation --checkpoint=latest

The checkpoint is the one selected on validation accuracy during training (`best/`), or the latest
one for runs without a validation split or with --checkpoint=latest. The data are those of the
run's config.json (same source, validation hold-out and normalisation). Writes into
<workdir>/evaluation/<split>/ (or --output_dir):

  metrics.json          loss, accuracy, confusion matrix (counts and row-normalised), per-class
                        precision / recall / F1 / support, macro and weighted averages, checkpoint
  report.txt            the same as text tables
  confusion_matrix.png  counts and row-normalised, with class names
  predictions.npz       per example: label, prediction, logits

Metrics are scikit-learn's; the loss is the training loss (softmax cross-entropy, no smoothing).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional, Sequence

from absl import app
from absl import flags
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
from sklearn import metrics as skm

from experiments import cli
from experiments import huge_pages
from experiments import input_pipeline
from experiments import plots
from experiments import restore
from experiments import trainer

SPLITS = ("test", "validation", "train")
OUTPUT_SUBDIR = "evaluation"
METRICS_JSON = "metrics.json"
REPORT_TXT = "report.txt"
CONFUSION_PNG = "confusion_matrix.png"
PREDICTIONS_NPZ = "predictions.npz"


@dataclasses.dataclass
class Evaluation:
  """The predictions of one checkpoint on one split, and their metrics (`metrics`, JSON-ready)."""
  workdir: str
  model_name: str
  split: str
  checkpoint: str            # "best" or "latest"
  step: int
  checkpoint_dir: str
  class_names: tuple[str, ...]
  labels: np.ndarray         # int [N]
  predictions: np.ndarray    # int [N]
  logits: np.ndarray         # float32 [N, classes]
  loss: float
  metrics: dict

  @property
  def confusion_matrix(self) -> np.ndarray:
    return np.asarray(self.metrics["confusion_matrix"])


# ------------------------------------------------------------------------------------------------
# Computation.
# ------------------------------------------------------------------------------------------------

def predict(model: nnx.Module, split: input_pipeline.Split, *, mean, std,
            batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Logits [N, classes] and per-example loss [N] of `model` (in eval mode) over `split`."""
  graphdef, state = nnx.split(model)
  mean, std = jnp.asarray(mean), jnp.asarray(std)

  @jax.jit
  def step(state, images, labels):
    logits = nnx.merge(graphdef, state)(trainer.normalize(images, mean, std))
    return logits.astype(jnp.float32), trainer.cross_entropy(logits, labels)

  logits, losses = [], []
  for images, labels, mask in input_pipeline.eval_batches(split, batch_size):
    batch_logits, batch_losses = jax.device_get(step(state, images, labels))
    logits.append(batch_logits[mask])
    losses.append(batch_losses[mask])
  return np.concatenate(logits), np.concatenate(losses)


def classification_metrics(labels: np.ndarray, predictions: np.ndarray,
                           class_names: Sequence[str]) -> dict:
  """Accuracy, confusion matrices and per-class / averaged precision, recall, F1 (scikit-learn).

  Classes absent from both labels and predictions get precision = recall = F1 = 0 (support 0)
  and a zero row in the row-normalised matrix.
  """
  classes = list(range(len(class_names)))
  counts = skm.confusion_matrix(labels, predictions, labels=classes)
  normalized = skm.confusion_matrix(labels, predictions, labels=classes, normalize="true")
  precision, recall, f1, support = skm.precision_recall_fscore_support(
      labels, predictions, labels=classes, average=None, zero_division=0)
  per_class = {name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
               for name, p, r, f, s in zip(class_names, precision, recall, f1, support)}
  averages = {}
  for average in ("macro", "weighted"):
    p, r, f, _ = skm.precision_recall_fscore_support(labels, predictions, labels=classes,
                                                     average=average, zero_division=0)
    averages[f"{average}_avg"] = {"precision": float(p), "recall": float(r), "f1": float(f),
                                  "support": int(len(labels))}
  return {"num_examples": int(len(labels)),
          "accuracy": float(skm.accuracy_score(labels, predictions)),
          "class_names": list(class_names),
          "confusion_matrix": counts.tolist(),
          "confusion_matrix_normalized": normalized.tolist(),
          "per_class": per_class, **averages}


def load_split(config, split: str):
  """(split data, class names, mean, std) of the run's data set, as training saw it."""
  if split not in SPLITS:
    raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
  data = input_pipeline.load_data(config.data, seed=config.seed)
  chosen = getattr(data, split)
  if chosen is None:
    raise ValueError(f"split {split!r} does not exist in this run: it trained without a "
                     "validation hold-out (config.data.num_validation=0); use --split=test")
  if len(chosen) == 0:
    raise ValueError(f"split {split!r} has no examples")
  return chosen, data.class_names, data.mean, data.std


def evaluate_workdir(workdir: str, split: str = "test", checkpoint: str = "best",
                     batch_size: Optional[int] = None) -> Evaluation:
  """Restores the run's checkpoint and evaluates it on `split` (see the module docstring)."""
  if split not in SPLITS:  # Checked first: a typo should not cost a model restore.
    raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
  config = restore.load_config(workdir)
  batch_size = batch_size or config.eval_batch_size
  if batch_size < 1:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  restored = restore.restore_model(workdir, checkpoint, config)
  data, class_names, mean, std = load_split(config, split)
  logits, losses = predict(restored.model, data, mean=mean, std=std, batch_size=batch_size)
  if logits.shape[-1] != len(class_names):
    raise ValueError(f"the model has {logits.shape[-1]} outputs but the data has "
                     f"{len(class_names)} classes")
  predictions = logits.argmax(axis=-1)
  return Evaluation(
      workdir=os.path.abspath(workdir), model_name=config.model.name, split=split,
      checkpoint=restored.checkpoint, step=restored.step, checkpoint_dir=restored.directory,
      class_names=tuple(class_names), labels=np.asarray(data.labels), predictions=predictions,
      logits=logits, loss=float(losses.mean()),
      metrics=classification_metrics(np.asarray(data.labels), predictions, class_names))


# ------------------------------------------------------------------------------------------------
# Output.
# ------------------------------------------------------------------------------------------------

def to_json(evaluation: Evaluation) -> dict:
  return {"workdir": evaluation.workdir, "model": evaluation.model_name, "split": evaluation.split,
          "checkpoint": {"kind": evaluation.checkpoint, "step": evaluation.step,
                         "directory": evaluation.checkpoint_dir},
          "loss": evaluation.loss, **evaluation.metrics}


def matrix_text(matrix, class_names: Sequence[str], fmt: str) -> str:
  """A matrix as a text table: rows = true class, columns = predicted class."""
  cells = [[format(v, fmt) for v in row] for row in np.asarray(matrix).tolist()]
  names = list(class_names)
  width = max([len(n) for n in names] + [len(c) for row in cells for c in row])
  head = max(len("true \\ predicted"), *map(len, names))
  lines = ["true \\ predicted".ljust(head) + "  " + "  ".join(n.rjust(width) for n in names)]
  lines += [n.ljust(head) + "  " + "  ".join(c.rjust(width) for c in row) for n, row in zip(names, cells)]
  return "\n".join(lines)


def per_class_rows(metrics: dict) -> tuple[list[str], list[list[str]]]:
  """Header and rows of the per-class table, averages last."""
  header = ["class", "precision", "recall", "f1", "support"]
  rows = [[name, f"{m['precision']:.4f}", f"{m['recall']:.4f}", f"{m['f1']:.4f}", str(m["support"])]
          for name, m in metrics["per_class"].items()]
  for key, label in (("macro_avg", "macro avg"), ("weighted_avg", "weighted avg")):
    m = metrics[key]
    rows.append([label, f"{m['precision']:.4f}", f"{m['recall']:.4f}", f"{m['f1']:.4f}",
                 str(m["support"])])
  return header, rows


def format_report(evaluation: Evaluation) -> str:
  m = evaluation.metrics
  header, rows = per_class_rows(m)
  widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
  table = "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                              for i, (c, w) in enumerate(zip(r, widths))) for r in [header, *rows])
  return "\n".join([
      f"{evaluation.model_name} on the {evaluation.split} split ({m['num_examples']} examples)",
      f"checkpoint: {evaluation.checkpoint} (step {evaluation.step}), {evaluation.checkpoint_dir}",
      f"loss {evaluation.loss:.4f}, accuracy {m['accuracy']:.4f} "
      f"({int(np.trace(evaluation.confusion_matrix))}/{m['num_examples']} correct)",
      "", "Confusion matrix (counts):", matrix_text(m["confusion_matrix"], m["class_names"], "d"),
      "", "Confusion matrix (row-normalised: each true class sums to 1):",
      matrix_text(m["confusion_matrix_normalized"], m["class_names"], ".3f"),
      "", "Per class:", table, ""])


def confusion_figure(evaluation: Evaluation):
  return plots.confusion_matrix_figure(
      evaluation.confusion_matrix, evaluation.metrics["confusion_matrix_normalized"],
      evaluation.class_names,
      f"{evaluation.model_name}, {evaluation.split} split, {evaluation.checkpoint} checkpoint "
      f"(step {evaluation.step}): accuracy {evaluation.metrics['accuracy']:.4f}")


def write_evaluation(evaluation: Evaluation, output_dir: str) -> dict[str, str]:
  """Writes metrics.json, report.txt, confusion_matrix.png and predictions.npz; returns the paths."""
  os.makedirs(output_dir, exist_ok=True)
  paths = {name: os.path.join(output_dir, name)
           for name in (METRICS_JSON, REPORT_TXT, CONFUSION_PNG, PREDICTIONS_NPZ)}
  with open(paths[METRICS_JSON], "w", encoding="utf-8") as f:
    json.dump(to_json(evaluation), f, indent=2)
  with open(paths[REPORT_TXT], "w", encoding="utf-8") as f:
    f.write(format_report(evaluation))
  plots.save_png(confusion_figure(evaluation), paths[CONFUSION_PNG])
  np.savez_compressed(paths[PREDICTIONS_NPZ], labels=evaluation.labels,
                      predictions=evaluation.predictions, logits=evaluation.logits)
  return paths


def default_output_dir(workdir: str, split: str) -> str:
  return os.path.join(workdir, OUTPUT_SUBDIR, split)


# ------------------------------------------------------------------------------------------------
# Command line.
# ------------------------------------------------------------------------------------------------

FLAGS = flags.FLAGS


def define_flags():
  """Command-line flags, defined only when run as a program (so that importing this module from
  another program, e.g. experiments.report or experiments.train, defines none)."""
  flags.DEFINE_string("workdir", None, "Work directory of a training run.", required=True)
  flags.DEFINE_enum("split", "test", SPLITS, "Data split to evaluate.")
  flags.DEFINE_enum("checkpoint", "best", restore.CHECKPOINTS,
                    "best: selected on validation accuracy (the latest if the run has no "
                    "validation split); latest: the newest checkpoint.")
  flags.DEFINE_integer("batch_size", None, "Evaluation batch size (default: the run's "
                       "config.eval_batch_size).")
  flags.DEFINE_string("output_dir", None, "Where to write (default: <workdir>/evaluation/<split>).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  evaluation = evaluate_workdir(FLAGS.workdir, FLAGS.split, FLAGS.checkpoint, FLAGS.batch_size)
  paths = write_evaluation(evaluation, FLAGS.output_dir or default_output_dir(FLAGS.workdir,
                                                                             FLAGS.split))
  print(format_report(evaluation))
  print(f"Wrote {', '.join(sorted(paths.values()))}")


if __name__ == "__main__":
  huge_pages.reexec_with_huge_pages()
  define_flags()
  cli.run_main(main)
