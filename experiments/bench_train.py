"""Training throughput (images/s) of vgg16 and bin_vgg16 at batch 128, and of the input pipeline.

  python -m experiments.bench_train
  python -m experiments.bench_train --models=bin_vgg16 --steps=10 --config_overrides=model.options.dtype=bfloat16

Times the jitted `experiments.trainer.train_step` of each model's preset (optimiser included) on a
device-resident batch, after compilation and warm-up, as the median of `--repeats` timings of
`--steps` steps each; the same for the forward pass (`eval_step`). The input pipeline (gather,
random crop, flip of uint8 CIFAR-sized images, as in training) is timed on the host alone, so the
two rates can be compared: the pipeline runs on a background thread and only limits training if
its rate is below the step rate. Reference numbers, a straightforward PyTorch 2.13 CPU
implementation on the project's 2-core machines: vgg16 97 images/s, bin_vgg16 55 images/s
training (the issue's target is 1.5x those).
"""

import functools
import json
import os
import statistics
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from experiments import input_pipeline
from experiments import optim
from experiments import trainer
from experiments.configs import bin_vgg16 as bin_vgg16_config
from experiments.configs import vgg16 as vgg16_config

PYTORCH_CPU_IMAGES_PER_SECOND = {"vgg16": 97.0, "bin_vgg16": 55.0}
TARGET_FACTOR = 1.5
CONFIGS = {"vgg16": vgg16_config, "bin_vgg16": bin_vgg16_config}

_MODELS = flags.DEFINE_list("models", ["vgg16", "bin_vgg16"], "Models to time (presets).")
_BATCH = flags.DEFINE_integer("batch_size", 128, "Global batch size.")
_STEPS = flags.DEFINE_integer("steps", 5, "Steps per timing.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timings per model (the median is reported).")
_OVERRIDES = flags.DEFINE_list("config_overrides", [], "key=value config overrides, e.g. "
                               "model.options.dtype=bfloat16 (values parsed as JSON, else strings).")
_OUTPUT = flags.DEFINE_string("output", "", "Also append the JSON results to this file.")


def _override(config, items):
  for item in items:
    key, value = item.split("=", 1)
    try:
      value = json.loads(value)
    except json.JSONDecodeError:
      pass
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def _median_rate(fn, images_per_call, repeats):
  """Median images/s of wall time, and images per CPU-second of this process (all threads).

  On a machine shared with other jobs the wall-clock rate falls with the load; the CPU-time rate
  does much less, and times the number of cores bounds what an idle machine would reach.
  """
  rates, cpu_rates = [], []
  for _ in range(repeats):
    t, c = time.perf_counter(), time.process_time()
    fn()
    rates.append(images_per_call / (time.perf_counter() - t))
    cpu_rates.append(images_per_call / max(time.process_time() - c, 1e-9))
  return statistics.median(rates), statistics.median(cpu_rates)


def bench_model(name: str, batch_size: int, steps: int, repeats: int, overrides) -> dict:
  """Train-step and forward images/s of the preset `name` on one synthetic device batch."""
  config = _override(CONFIGS[name].get_config(), overrides)
  model = trainer.create_model(config, 0)
  parts = trainer.split_model(model)
  labels = optim.param_labels(parts.params, parts.binary_mask)
  schedule = optim.learning_rate_schedule(config.optim, 390, 390 * config.num_epochs)
  tx = optim.create_optimizer(config.optim, labels, schedule)
  mesh = trainer.make_mesh(config.num_devices)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  sharded = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  state = jax.device_put({"params": parts.params, "rest": parts.rest,
                          "opt_state": tx.init(parts.params)}, replicated)
  rng = np.random.default_rng(0)
  images = jax.device_put(rng.integers(0, 256, (batch_size, 32, 32, 3), dtype=np.uint8), sharded)
  labels_ = jax.device_put(rng.integers(0, 10, batch_size).astype(np.int32), sharded)
  mask = jax.device_put(np.ones(batch_size, bool), sharded)
  mean, std = jnp.full(3, 0.5), jnp.full(3, 0.25)
  step_fn = jax.jit(functools.partial(trainer.train_step, graphdef=parts.train_graphdef, tx=tx,
                                      mean=mean, std=std, label_smoothing=0.0),
                    donate_argnums=0, out_shardings=(replicated, replicated))
  eval_fn = jax.jit(functools.partial(trainer.eval_step, graphdef=parts.eval_graphdef, mean=mean,
                                      std=std))
  t = time.perf_counter()
  state, metrics = step_fn(state, images, labels_)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - t
  state, metrics = step_fn(state, images, labels_)  # Warm-up.
  jax.block_until_ready(metrics)

  def train_steps():
    nonlocal state
    for _ in range(steps):
      state, m = step_fn(state, images, labels_)
    jax.block_until_ready(m)

  def forward_steps():
    for _ in range(steps):
      out = eval_fn(state["params"], state["rest"], images, labels_, mask)
    jax.block_until_ready(out)

  train_rate, train_cpu_rate = _median_rate(train_steps, steps * batch_size, repeats)
  forward_steps()  # Compile and warm up.
  forward_rate, forward_cpu_rate = _median_rate(forward_steps, steps * batch_size, repeats)
  ref = PYTORCH_CPU_IMAGES_PER_SECOND[name]
  return {"model": name, "batch_size": batch_size, "devices": mesh.size,
          "dtype": config.model.options.get("dtype", "float32"),
          "train_images_per_second": round(train_rate, 2),
          "forward_images_per_second": round(forward_rate, 2),
          "train_images_per_cpu_second": round(train_cpu_rate, 2),
          "forward_images_per_cpu_second": round(forward_cpu_rate, 2),
          "compile_seconds": round(compile_s, 1),
          "pytorch_cpu_reference": ref, "ratio_to_reference": round(train_rate / ref, 3),
          "target_ratio": TARGET_FACTOR, "meets_target": train_rate >= TARGET_FACTOR * ref}


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
             "load_average_1min": round(os.getloadavg()[0], 2)}
  results.update(bench_input_pipeline(_BATCH.value))
  print(json.dumps(results), flush=True)
  rows = []
  for name in _MODELS.value:
    if name not in CONFIGS:
      raise app.UsageError(f"--models: {name!r} is not one of {', '.join(CONFIGS)}")
    row = bench_model(name, _BATCH.value, _STEPS.value, _REPEATS.value, _OVERRIDES.value)
    row["load_average_1min"] = round(os.getloadavg()[0], 2)
    row["input_to_train_ratio"] = round(
        results["input_pipeline_images_per_second"] / row["train_images_per_second"], 1)
    rows.append(row)
    print(json.dumps(row), flush=True)
  if _OUTPUT.value:
    with open(_OUTPUT.value, "a", encoding="utf-8") as f:
      for r in [results, *rows]:
        f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
  app.run(main)
