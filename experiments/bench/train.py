"""Training throughput (images/s) of vgg16 and bin_vgg16 at batch 128, and of the input pipeline.

  python -m experiments.bench.train
  python -m experiments.bench.train --models=bin_vgg16 --steps=10 --config_overrides=model.options.dtype=bfloat16

Times the jitted `experiments.trainer.train_step` of each model's preset (optimiser included) on a
device-resident batch, after compilation and warm-up, as the median of `--repeats` timings of
`--steps` steps each; the same for the forward pass (`eval_step`). The input pipeline (gather,
random crop, flip of uint8 CIFAR-sized images, as in training) is timed on the host alone, so the
two rates can be compared: the pipeline runs on a background thread and only limits training if
its rate is below the step rate.

A float roofline, in the same run: the best float32 matmul rate XLA reaches here (large,
well-shaped products) bounds what the float products of a step (every layer's forward and
gradients, except binary layers' packed forward) can reach when they are computed as direct sums
(im2col, implicit GEMM), hence bounds images/s with all else free. Each row reports that bound and
the fraction of it the target would take. Winograd F(4x4, 3x3) (conv2d's "winograd" formulation,
used for 3x3 layers on the CPU) does up to 4x fewer multiplications than the direct sum, so a step
can pass this bound; `float_gmac_per_second` counts direct-sum MACs per second (an effective rate).

The baseline is measured in the same run: experiments/bench/pytorch_baseline.py (a straightforward
PyTorch implementation of the same two models) runs as a subprocess under `--pytorch_python` (by
default this interpreter, when it has torch; torch is not an xnorjax dependency), and the ratio to
it is what the target (1.5x) applies to. Without torch, the rows compare against the numbers the
training issue quotes for PyTorch 2.13 on the project's 2-core Xeons (vgg16 97, bin_vgg16 55
images/s), labelled as such: numbers from another machine, not a same-machine ratio.
"""

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from experiments import cli
from experiments import huge_pages
from experiments import input_pipeline
from experiments.bench import synthetic_steps
from experiments.bench import timing
from xnorjax.summary import compute_summary

# What the training issue quotes for PyTorch 2.13 on the project's 2-core Xeons (not this machine).
ISSUE_PYTORCH_IMAGES_PER_SECOND = {"vgg16": 97.0, "bin_vgg16": 55.0}
PYTORCH_BASELINE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pytorch_baseline.py")
PYTORCH_MODELS = tuple(ISSUE_PYTORCH_IMAGES_PER_SECOND)  # what pytorch_baseline.py implements
TARGET_FACTOR = 1.5
CONFIGS = synthetic_steps.CONFIGS
# Large, well-shaped float32 products (M, K, N); the fastest is the float roofline's ceiling.
CEILING_MATMULS = ((2048, 4608, 512), (8192, 2304, 256), (4096, 4096, 1024))

_MODELS = flags.DEFINE_list("models", ["vgg16", "bin_vgg16"], "Models to time (presets).")
_BATCH = flags.DEFINE_integer("batch_size", 128, "Global batch size.")
_STEPS = flags.DEFINE_integer("steps", 5, "Steps per timing.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timings per model (the median is reported).")
_OVERRIDES = flags.DEFINE_list("config_overrides", [], "key=value config overrides, e.g. "
                               "model.options.dtype=bfloat16 (values parsed as JSON, else strings).")
_OUTPUT = flags.DEFINE_string("output", "", "Also append the JSON results to this file.")
_PYTORCH_PYTHON = flags.DEFINE_string(
    "pytorch_python", "auto", "Python interpreter with torch that runs the PyTorch baseline in "
    "this run: 'auto' (this interpreter if it has torch), a path, or 'none' (skip).")


def _median_rate(fn, images_per_call, repeats):
  """Median images/s of wall time, and images per CPU-second of this process (all threads).

  On a machine shared with other jobs the wall-clock rate falls with the load; the CPU-time rate
  does much less, and times the number of cores bounds what an idle machine would reach.
  """
  rates, cpu_rates = [], []
  for _ in range(repeats):
    wall, cpu = timing.timed_call(fn)
    rates.append(images_per_call / wall)
    cpu_rates.append(images_per_call / max(cpu, 1e-9))
  return statistics.median(rates), statistics.median(cpu_rates)


def float_matmul_ceiling(repeats: int) -> float:
  """XLA's float32 matmul rate on this machine in GMAC/s: the fastest of CEILING_MATMULS (median)."""
  rng = np.random.default_rng(0)
  matmul = jax.jit(jnp.dot)
  best = 0.0
  for m, k, n in CEILING_MATMULS:
    a = jnp.asarray(rng.standard_normal((m, k), np.float32))
    b = jnp.asarray(rng.standard_normal((k, n), np.float32))
    run = lambda a=a, b=b: jax.block_until_ready(matmul(a, b))
    run()  # Compile and warm up.
    macs_per_second, _ = _median_rate(run, m * k * n, repeats)
    best = max(best, macs_per_second / 1e9)
  return best


def float_training_macs(model, image_shape=(32, 32, 3)) -> int:
  """Multiply-accumulates per image that one training step runs as float products.

  Float layers: forward, input gradient and kernel gradient (3x their MACs). Binary layers: the
  forward is packed (popcounts, not counted); their two gradients are float products (2x). Less
  the first layer's input gradient, which nothing needs.
  """
  s = compute_summary(model, (1, *image_shape))
  first = next(layer for layer in s.layers if layer.macs)
  return 3 * (s.macs - s.binary_macs) + 2 * s.binary_macs - first.macs


def roofline(row: dict, macs_per_image: int, ceiling_gmacs: float) -> dict:
  """Adds the float roofline: the images/s bound at the matmul ceiling, and the target's share."""
  bound = ceiling_gmacs * 1e9 / macs_per_image
  target = row["target_ratio"] * row["pytorch_train_images_per_second"]
  row.update({"float_train_mmac_per_image": round(macs_per_image / 1e6, 1),
              "float_matmul_ceiling_gmac_per_second": round(ceiling_gmacs, 1),
              "float_gmac_per_second": round(row["train_images_per_second"] * macs_per_image / 1e9, 1),
              "ceiling_images_per_second": round(bound, 1),
              "target_images_per_second": round(target, 1),
              "target_over_ceiling": round(target / bound, 3)})
  return row


def bench_model(name: str, batch_size: int, steps: int, repeats: int, overrides) -> dict:
  """Train-step and forward images/s of the preset `name` on one synthetic device batch."""
  s = synthetic_steps.build_steps(name, batch_size, overrides)
  macs_per_image = float_training_macs(s.model)
  state = s.state
  t = time.perf_counter()
  state, metrics = s.step_fn(state, s.images, s.labels)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - t
  state, metrics = s.step_fn(state, s.images, s.labels)  # Warm-up.
  jax.block_until_ready(metrics)

  def train_steps():
    nonlocal state
    for _ in range(steps):
      state, m = s.step_fn(state, s.images, s.labels)
    jax.block_until_ready(m)

  def forward_steps():
    for _ in range(steps):
      out = s.eval_fn(state["params"], state["rest"], s.images, s.labels, s.mask)
    jax.block_until_ready(out)

  train_rate, train_cpu_rate = _median_rate(train_steps, steps * batch_size, repeats)
  forward_steps()  # Compile and warm up.
  forward_rate, forward_cpu_rate = _median_rate(forward_steps, steps * batch_size, repeats)
  return {"model": name, "batch_size": batch_size, "devices": s.mesh.size,
          "dtype": s.config.model.options.get("dtype", "float32"),
          "train_images_per_second": round(train_rate, 2),
          "forward_images_per_second": round(forward_rate, 2),
          "train_images_per_cpu_second": round(train_cpu_rate, 2),
          "forward_images_per_cpu_second": round(forward_cpu_rate, 2),
          "compile_seconds": round(compile_s, 1), "macs_per_image": macs_per_image}


def pytorch_python() -> str:
  """The interpreter that runs the PyTorch baseline, or "" to skip it."""
  choice = _PYTORCH_PYTHON.value
  if choice == "none":
    return ""
  if choice == "auto":
    return sys.executable if importlib.util.find_spec("torch") is not None else ""
  if not os.access(choice, os.X_OK):
    raise app.UsageError(f"--pytorch_python: {choice!r} is not an executable interpreter")
  return choice


def bench_pytorch(python: str, models, batch_size: int, steps: int, repeats: int) -> dict:
  """{model: row} from experiments/bench/pytorch_baseline.py run under `python` (a subprocess).

  The subprocess inherits this process's environment, huge pages (experiments/huge_pages.py)
  included, so both sides of the ratio run with the same allocator settings.
  """
  done = subprocess.run(
      [python, PYTORCH_BASELINE, f"--models={','.join(models)}", f"--batch_size={batch_size}",
       f"--steps={steps}", f"--repeats={repeats}"],
      check=False, capture_output=True, text=True)
  if done.returncode != 0:
    raise RuntimeError(f"the PyTorch baseline failed under --pytorch_python={python} (exit "
                       f"{done.returncode}):\n{done.stderr[-2000:]}")
  rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
  return {row["model"]: row for row in rows}


def compare(row: dict, pytorch_row) -> dict:
  """The target's ratio: against the same-machine PyTorch run when there is one, else against the
  issue's quoted figure; a model with neither (the baseline has only vgg16 and bin_vgg16) gets no
  ratio."""
  if pytorch_row is None and row["model"] not in ISSUE_PYTORCH_IMAGES_PER_SECOND:
    row["pytorch_source"] = "none: the PyTorch baseline has only " + ", ".join(PYTORCH_MODELS)
    return row
  if pytorch_row is not None:
    ref, source = pytorch_row["train_images_per_second"], "measured in this run"
    row["pytorch_forward_images_per_second"] = pytorch_row["forward_images_per_second"]
  else:
    ref = ISSUE_PYTORCH_IMAGES_PER_SECOND[row["model"]]
    source = "quoted by the issue for the project's Xeons (another machine)"
  row.update({"pytorch_train_images_per_second": ref, "pytorch_source": source,
              "ratio_to_pytorch": round(row["train_images_per_second"] / ref, 3),
              "target_ratio": TARGET_FACTOR,
              "meets_target": row["train_images_per_second"] >= TARGET_FACTOR * ref})
  return row


def bench_input_pipeline(batch_size: int, batches: int = 200) -> dict:
  """Images/s of the training-batch pipeline (gather + crop + flip) on CIFAR-sized uint8 data."""
  rng = np.random.default_rng(0)
  split = input_pipeline.Split(rng.integers(0, 256, (45000, 32, 32, 3), dtype=np.uint8),
                               rng.integers(0, 10, 45000).astype(np.int32))
  spec = input_pipeline.TrainBatchSpec(batch_size=batch_size, seed=0)
  it = input_pipeline.train_batches(split, spec, 0, batches + 1)
  next(it)
  t = time.perf_counter()
  for _ in it:
    pass
  return {"input_pipeline_images_per_second": round(batches * batch_size / (time.perf_counter() - t), 1)}


def main(argv):
  del argv
  results = {"device": str(jax.devices()[0].device_kind), "platform": jax.default_backend(),
             "num_devices": jax.device_count(), "cpu_count": os.cpu_count(),
             "load_average_1min": round(os.getloadavg()[0], 2),
             "glibc_tunables": os.environ.get("GLIBC_TUNABLES", "")}
  results.update(bench_input_pipeline(_BATCH.value))
  results["float_matmul_ceiling_gmac_per_second"] = round(float_matmul_ceiling(_REPEATS.value), 1)
  print(json.dumps(results), flush=True)
  for name in _MODELS.value:
    if name not in CONFIGS:
      raise app.UsageError(f"--models: {name!r} is not one of {', '.join(CONFIGS)}")
  python = pytorch_python()
  pytorch_models = [name for name in _MODELS.value if name in PYTORCH_MODELS]
  pytorch = (bench_pytorch(python, pytorch_models, _BATCH.value, _STEPS.value, _REPEATS.value)
             if python and pytorch_models else {})
  for row in pytorch.values():
    print(json.dumps(row), flush=True)
  rows = []
  for name in _MODELS.value:
    row = compare(bench_model(name, _BATCH.value, _STEPS.value, _REPEATS.value, _OVERRIDES.value),
                  pytorch.get(name))
    row = roofline(row, row.pop("macs_per_image"), results["float_matmul_ceiling_gmac_per_second"])
    row["load_average_1min"] = round(os.getloadavg()[0], 2)
    row["input_to_train_ratio"] = round(
        results["input_pipeline_images_per_second"] / row["train_images_per_second"], 1)
    rows.append(row)
    print(json.dumps(row), flush=True)
  if _OUTPUT.value:
    with open(_OUTPUT.value, "a", encoding="utf-8") as f:
      for r in [results, *pytorch.values(), *rows]:
        f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
  huge_pages.reexec_with_huge_pages()
  cli.run_main(main)
