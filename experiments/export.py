"""Exports a training run's selected checkpoint as a packed inference model, and checks it.

  python -m experiments.export --workdir=runs/bin_vgg16 --out=exported/bin_vgg16
  python -m experiments.export --workdir=runs/bin_vgg16 --out=exported/bin_vgg16 --verify_images=-1

The checkpoint is the one selected on validation accuracy (`best/`; the latest for runs without a
validation split, or with --checkpoint=latest), restored by `experiments.restore`. The model is
converted by `xnorjax.deploy.export_model` (binary kernels bit-packed once; alpha, biases and the
surrounding BatchNorms folded into per-channel scales, biases or exact sign thresholds; float
first and last layers kept) and saved with orbax beside manifest.json (model, options, input shape
and the run's normalisation, classes, source checkpoint, program, array shapes, sizes). Prints the
sizes (binary layers float32 vs packed, whole model, files on disk); then loads the export back with
`xnorjax.deploy.load` and compares it, on the first --verify_images test images of the run's data,
with the training-time model in evaluation mode as `experiments.evaluate` runs it, both with its
per-layer packed kernels (what `model.eval()` runs) and with float convs (implementation="float"):
predictions and logits. The comparison is written into the manifest as "verification".
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional

from absl import app
from absl import flags
from flax import nnx
import jax
import numpy as np

from experiments import evaluate
from experiments import cli
from experiments import huge_pages
from experiments import input_pipeline
from experiments import restore
from xnorjax import deploy
from xnorjax import nn as xnn
from xnorjax.deploy import sizes as sizes_lib

IMPLEMENTATIONS = ("auto", "float")  # per-layer packed kernels in eval mode / float convs


def set_binary_implementation(model: nnx.Module, implementation: str) -> nnx.Module:
  """Sets `implementation` on every BinaryConv / BinaryDense of `model` (in place); returns it.

  "float" makes the eval-mode model run float convs (the baseline of experiments.bench.deploy);
  "auto" restores the default (per-layer packed kernels in evaluation mode).
  """
  xnn.functional.check_implementation(implementation)
  for _, module in nnx.iter_modules(model):
    if isinstance(module, (xnn.BinaryConv, xnn.BinaryDense)):
      module.implementation = implementation
  return model


def model_logits_fn(model: nnx.Module):
  """A jitted function images -> logits of `model` as it is now (mode and implementation fixed)."""
  graphdef, state = nnx.split(model)
  fn = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
  return lambda x: fn(state, x)


@dataclasses.dataclass
class Agreement:
  """The exported model's logits against a reference model's on the same images."""
  reference: str
  images: int
  predictions_equal: int
  max_abs_logit_diff: float
  max_rel_logit_diff: float   # |diff| / max(1, |reference|)
  exported_accuracy: Optional[float] = None
  reference_accuracy: Optional[float] = None

  @property
  def all_equal(self) -> bool:
    return self.predictions_equal == self.images


def compare(got: np.ndarray, want: np.ndarray, reference: str,
            labels: Optional[np.ndarray] = None) -> Agreement:
  """How the exported model's logits `got` agree with a reference model's `want`."""
  diff = np.abs(got - want)
  rel = diff / np.maximum(1.0, np.abs(want))
  agreement = Agreement(reference, len(got), int(np.sum(got.argmax(-1) == want.argmax(-1))),
                        float(diff.max()), float(rel.max()))
  if labels is not None:
    agreement.exported_accuracy = float(np.mean(got.argmax(-1) == labels))
    agreement.reference_accuracy = float(np.mean(want.argmax(-1) == labels))
  return agreement


def exported_logits(predictor: deploy.Predictor, split: input_pipeline.Split,
                    batch_size: int) -> np.ndarray:
  """The exported model's logits over `split`, batched as `experiments.evaluate.predict` does."""
  return np.concatenate([np.asarray(predictor(images))[mask] for images, _, mask in
                         input_pipeline.eval_batches(split, batch_size)]).astype(np.float32)


def verify(predictor: deploy.Predictor, model: nnx.Module, split: input_pipeline.Split, *, mean,
           std, batch_size: int = 250) -> list[Agreement]:
  """The exported model against `model` in eval mode, per-layer packed ("auto") and "float".

  The references are `experiments.evaluate.predict`'s logits: the uint8 images normalised inside
  the jitted evaluation, as training evaluates (the exported predictor does the same). Leaves the
  model's binary layers at implementation="auto".
  """
  got = exported_logits(predictor, split, batch_size)
  model.eval()
  results = []
  for implementation in IMPLEMENTATIONS:
    want, _ = evaluate.predict(set_binary_implementation(model, implementation), split, mean=mean,
                               std=std, batch_size=batch_size)
    results.append(compare(got, want, f"eval model, implementation={implementation!r}",
                           split.labels))
  set_binary_implementation(model, "auto")
  return results


def export_workdir(workdir: str, out: str, *, checkpoint: str = "best", overwrite: bool = False,
                   verify_images: int = 1000, batch_size: int = 250):
  """Exports and saves the run's checkpoint; returns (manifest, [Agreement]) (see module doc)."""
  restored = restore.restore_model(workdir, checkpoint)
  config = restored.config
  data = input_pipeline.load_data(config.data, seed=config.seed)
  exported = deploy.export_model(
      restored.model, input_shape=(config.data.image_size, config.data.image_size, 3),
      mean=data.mean, std=data.std, classes=data.class_names, model_name=config.model.name,
      model_options=config.model.options.to_dict(),
      source={"workdir": os.path.abspath(workdir), "checkpoint": restored.checkpoint,
              "step": restored.step, "directory": restored.directory,
              "val_accuracy": restored.record.get("best_val_accuracy")})
  manifest = deploy.save(exported, out, overwrite=overwrite)
  agreements = []
  if verify_images:
    predictor = deploy.load(out)
    n = len(data.test) if verify_images < 0 else min(verify_images, len(data.test))
    test = input_pipeline.Split(data.test.images[:n], data.test.labels[:n])
    agreements = verify(predictor, restored.model, test, mean=data.mean, std=data.std,
                        batch_size=batch_size)
    manifest["verification"] = [dataclasses.asdict(a) for a in agreements]
    with open(os.path.join(out, deploy.export.MANIFEST_FILE), "w", encoding="utf-8") as f:
      json.dump(manifest, f, indent=1)
      f.write("\n")
  return manifest, agreements


def format_summary(manifest: dict, agreements, out: str) -> str:
  lines = [f"Exported {manifest['model']} ({manifest['source'].get('checkpoint')} checkpoint, "
           f"step {manifest['source'].get('step')}) to {os.path.abspath(out)}", "",
           sizes_lib.format_report(manifest["sizes"]), ""]
  manifest_bytes = os.path.getsize(os.path.join(out, deploy.export.MANIFEST_FILE))
  lines.append(f"Files: arrays/ {manifest['sizes']['arrays_dir_bytes']:,} B (orbax), "
               f"manifest.json {manifest_bytes:,} B")
  for a in agreements:
    acc = (f"; accuracy exported {a.exported_accuracy:.4f}, reference {a.reference_accuracy:.4f}"
           if a.exported_accuracy is not None else "")
    lines.append(f"vs {a.reference}: predictions equal on {a.predictions_equal}/{a.images} test "
                 f"images, max |logit diff| {a.max_abs_logit_diff:.3g} (relative "
                 f"{a.max_rel_logit_diff:.3g}){acc}")
  return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Command line.
# ------------------------------------------------------------------------------------------------

FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_string("workdir", None, "Work directory of a training run.", required=True)
  flags.DEFINE_string("out", None, "Directory to write the exported model to.", required=True)
  flags.DEFINE_enum("checkpoint", "best", restore.CHECKPOINTS,
                    "best: selected on validation accuracy (the latest if the run has no "
                    "validation split); latest: the newest checkpoint.")
  flags.DEFINE_bool("overwrite", False, "Replace an existing export in --out.")
  flags.DEFINE_integer("verify_images", 1000, "Compare with the training-time model on this many "
                       "test images (0: skip, -1: the whole test split).")
  flags.DEFINE_integer("batch_size", 250, "Batch size of the verification.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  manifest, agreements = export_workdir(
      FLAGS.workdir, FLAGS.out, checkpoint=FLAGS.checkpoint, overwrite=FLAGS.overwrite,
      verify_images=FLAGS.verify_images, batch_size=FLAGS.batch_size)
  print(format_summary(manifest, agreements, FLAGS.out))


if __name__ == "__main__":
  huge_pages.reexec_with_huge_pages()
  define_flags()
  cli.run_main(main)
