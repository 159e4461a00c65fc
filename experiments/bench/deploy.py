"""Images per second of the exported bin_vgg16 against the training-time model in evaluation mode.

Run: .venv/bin/python -m experiments.bench.deploy [--batches=1,64] [--workdir=runs/bin_vgg16]
                                                  [--rounds=5] [--min_seconds=1] [--out=PATH]

Three forms of the same network, on the same normalised float32 images, in one process:
  * eval, XLA:       the training-time model after `model.eval()` with implementation="float" on
                     its binary layers: float convs (`xnorjax.ops.conv2d`'s per-shape formulation)
                     on +-1 activations and alpha * sign(W) kernels.
  * eval, per-layer: the same model with its default implementation="auto": in evaluation mode
                     each binary layer runs the packed XNOR kernel, packing its input and its
                     kernel at every call, with float activations between layers.
  * exported:        `xnorjax.deploy.load` of its export: kernels packed once, BatchNorms, ReLU and
                     the next sign folded into the kernels' epilogues, activations packed from the
                     first binary layer to the last.
The model is the run's selected checkpoint with --workdir, else bin_vgg16 with random weights and
random BatchNorm statistics (speed does not depend on the values). Each form is compiled and run
once untimed; then `rounds` rounds time every form in turn (calls repeated for at least
`min_seconds`), and the median round counts. The machines are shared: compare the ratios, which
are measured within one run. Also checks that the three agree on the predictions of the timed batch.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import tempfile

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from experiments import export as export_lib
from experiments import cli
from experiments import huge_pages
from experiments.bench import timing
from xnorjax import deploy
from xnorjax import models

IMAGE = (32, 32, 3)
FORMS = ("eval, XLA", "eval, per-layer", "exported")


def random_bin_vgg16(seed: int = 0) -> nnx.Module:
  """bin_vgg16 with random weights and random BatchNorm statistics (gammas of both signs)."""
  rng = np.random.default_rng(seed)
  model = models.create_model("bin_vgg16", num_classes=10, rngs=nnx.Rngs(seed))
  for _, m in nnx.iter_modules(model):
    if isinstance(m, nnx.BatchNorm):
      c = m.mean[...].shape[0]
      m.mean[...] = jnp.asarray(rng.normal(0.5, 0.5, c), jnp.float32)
      m.var[...] = jnp.asarray(rng.uniform(0.5, 2.0, c), jnp.float32)
      m.scale[...] = jnp.asarray(rng.normal(0.0, 1.0, c), jnp.float32)
      m.bias[...] = jnp.asarray(rng.normal(0.0, 0.5, c), jnp.float32)
  return model


def benchmark(model: nnx.Module, predictor: deploy.Predictor, batches, *, rounds: int,
              min_seconds: float, seed: int = 0) -> list[dict]:
  """Per batch size: images per second of the three forms (see the module docstring)."""
  model.eval()
  xla = export_lib.model_logits_fn(export_lib.set_binary_implementation(model, "float"))
  per_layer = export_lib.model_logits_fn(export_lib.set_binary_implementation(model, "auto"))
  forms = dict(zip(FORMS, (xla, per_layer, predictor)))
  rng = np.random.default_rng(seed)
  rows = []
  for batch in batches:
    x = jnp.asarray(rng.normal(size=(batch, *IMAGE)), jnp.float32)
    predictions = {name: np.asarray(fn(x)).argmax(-1) for name, fn in forms.items()}  # compiles
    times = {name: [] for name in forms}
    for _ in range(rounds):
      for name, fn in forms.items():
        times[name].append(timing.seconds_per_call(functools.partial(fn, x), min_seconds))
    row = {"batch": batch}
    for name in forms:
      row[name] = batch / statistics.median(times[name])
    row["exported / eval, XLA"] = row["exported"] / row["eval, XLA"]
    row["per-layer / eval, XLA"] = row["eval, per-layer"] / row["eval, XLA"]
    row["exported / per-layer"] = row["exported"] / row["eval, per-layer"]
    row["predictions equal"] = all(np.array_equal(p, predictions["exported"])
                                   for p in predictions.values())
    rows.append(row)
    print(format_row(row), flush=True)
  return rows


HEADER = ("| batch | eval, XLA float convs (img/s) | eval, per-layer packed (img/s) | exported "
          "(img/s) | exported vs XLA | per-layer vs XLA | exported vs per-layer |\n"
          "|---:|---:|---:|---:|---:|---:|---:|")


def format_row(row: dict) -> str:
  return (f"| {row['batch']} | {row['eval, XLA']:.1f} | {row['eval, per-layer']:.1f} | "
          f"{row['exported']:.1f} | {row['exported / eval, XLA']:.1f}x | "
          f"{row['per-layer / eval, XLA']:.2f}x | {row['exported / per-layer']:.1f}x |")


def _cpu_name() -> str:
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batches", default="1,64", help="comma-separated batch sizes")
  parser.add_argument("--workdir", default="", help="a bin_vgg16 training run (default: random "
                      "weights)")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--min_seconds", type=float, default=1.0)
  parser.add_argument("--out", default="", help="write the results as JSON here")
  args = parser.parse_args()
  batches = [int(b) for b in args.batches.split(",") if b]
  if not batches or min(batches) < 1 or args.rounds < 1:
    parser.error("--batches must list positive ints and --rounds must be >= 1")

  if args.workdir:
    from experiments import restore  # pylint: disable=g-import-not-at-top
    restored = restore.restore_model(args.workdir)
    model, source = restored.model, f"{args.workdir} ({restored.checkpoint}, step {restored.step})"
  else:
    model, source = random_bin_vgg16(), "random weights and BatchNorm statistics"
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "exported")
    manifest = deploy.save(deploy.export_model(model, input_shape=IMAGE, model_name="bin_vgg16"),
                           path)
    predictor = deploy.load(path)
  sizes = manifest["sizes"]
  print(f"bin_vgg16 ({source}) on {jax.devices()[0].platform}: {_cpu_name()}, "
        f"{os.cpu_count()} CPUs, jax {jax.__version__}")
  print(f"binary layers {sizes['binary_float32_bytes']:,} B float32 -> "
        f"{sizes['binary_packed_bytes']:,} B packed ({sizes['binary_ratio']:.1f}x); whole model "
        f"{sizes['model_float32_bytes']:,} -> {sizes['model_exported_bytes']:,} B")
  print(HEADER)
  rows = benchmark(model, predictor, batches, rounds=args.rounds, min_seconds=args.min_seconds)
  if not all(r["predictions equal"] for r in rows):
    print("WARNING: the three forms disagree on some predictions of the timed batch")
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump({"source": source, "cpu": _cpu_name(), "cpus": os.cpu_count(),
                 "jax": jax.__version__, "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
                 "sizes": sizes, "rows": rows}, f, indent=2)


if __name__ == "__main__":
  huge_pages.reexec_with_huge_pages()
  cli.run_main(main, absl_flags=False)
