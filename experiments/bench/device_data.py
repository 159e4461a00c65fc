"""Training images/s with the on-device input pipeline against the host pipeline, one model.

  python -m experiments.bench.device_data --model=bin_vgg16 --batch_size=128
  python -m experiments.bench.device_data --model=vgg16 --config_overrides=model.options.dtype=bfloat16

Both paths train the preset's model on the same synthetic CIFAR-sized uint8 split (45,000 images
by default) with its optimiser, as experiments/trainer.py does: the host path gathers, crops and
flips each batch in numpy on the prefetching thread (input_pipeline.train_batches) and calls the
jitted train step once per step; the device path (config.data.on_device, experiments/
device_pipeline.py) sends each chunk's indices, crop offsets and flips and runs a `lax.scan` of
`--steps_per_dispatch` steps. After compilation and a warm-up, the two are timed in interleaved
rounds of `--steps` steps (host, device, host, ...) so that a change in machine load affects both;
the table and the JSON line report each path's median over `--rounds`.
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

from experiments import device_pipeline
from experiments import input_pipeline
from experiments import cli
from experiments import configs
from experiments import optim
from experiments import train_loop
from experiments import trainer


def define_flags():
  """The command line's flags (defined only when run as a program, so that importing this module
  next to experiments.bench.train, whose flags have the same names, does not clash)."""
  global _MODEL, _BATCH, _STEPS, _DISPATCH, _ROUNDS, _IMAGES, _OVERRIDES
  _MODEL = flags.DEFINE_string("model", "bin_vgg16", "Model preset (experiments/configs/<model>.py).")
  _BATCH = flags.DEFINE_integer("batch_size", 128, "Global batch size.")
  _STEPS = flags.DEFINE_integer("steps", 100, "Training steps per timed round (a multiple of "
                                "--steps_per_dispatch).")
  _DISPATCH = flags.DEFINE_integer("steps_per_dispatch", 50, "Device path: steps per lax.scan.")
  _ROUNDS = flags.DEFINE_integer("rounds", 3, "Timed rounds per path (interleaved; median).")
  _IMAGES = flags.DEFINE_integer("num_images", 45000, "Images in the synthetic training split.")
  _OVERRIDES = flags.DEFINE_list("config_overrides", [], "key=value config overrides, e.g. "
                                 "model.options.dtype=bfloat16")


def build(config, num_images: int):
  """(state, unjitted step function, split, mesh) of `config`'s model and optimiser."""
  parts = trainer.split_model(trainer.create_model(config, 0))
  steps_per_epoch = num_images // config.batch_size
  schedule = optim.learning_rate_schedule(config.optim, steps_per_epoch, 100 * steps_per_epoch)
  tx = optim.create_optimizer(config.optim, optim.param_labels(parts.params, parts.binary_mask),
                              schedule)
  mesh = trainer.make_mesh(config.num_devices)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  state = jax.device_put({"params": parts.params, "rest": parts.rest,
                          "opt_state": tx.init(parts.params)}, replicated)
  step_fn = functools.partial(trainer.train_step, graphdef=parts.train_graphdef, tx=tx,
                              mean=jnp.full(3, 0.5), std=jnp.full(3, 0.25), label_smoothing=0.0)
  size = config.data.image_size
  split, _ = input_pipeline.synthetic_splits(num_images, 1, num_classes=config.data.num_classes,
                                             image_size=size)
  return state, step_fn, input_pipeline.Split(*split["train"]), mesh


class HostPath:
  """The trainer's host loop: prefetched numpy batches, one jitted step per batch."""

  def __init__(self, step_fn, split, spec, mesh, prefetch: int):
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    self.sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    self.train_fn = jax.jit(step_fn, donate_argnums=0, out_shardings=(replicated, replicated))
    self.split, self.spec, self.prefetch = split, spec, prefetch

  def run(self, state, start: int, steps: int):
    batches = input_pipeline.Prefetcher(
        input_pipeline.train_batches(self.split, self.spec, start, start + steps), self.prefetch)
    try:
      for _, images, labels in batches:
        state, metrics = self.train_fn(state, *train_loop.global_batch(
            self.sharding, images, labels))
    finally:
      batches.close()
    return jax.block_until_ready((state, metrics))[0]


class DevicePath:
  """The trainer's on-device loop: the split on the mesh, a lax.scan per chunk of steps."""

  def __init__(self, step_fn, split, spec, mesh, length: int):
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    self.chunk_fn = jax.jit(device_pipeline.make_train_chunk(step_fn, padding=spec.padding,
                                                             batch_sharding=batch_sharding),
                            donate_argnums=0, out_shardings=(replicated, replicated))
    self.num_examples, self.spec, self.mesh, self.length = len(split), spec, mesh, length
    self.split = device_pipeline.to_device(split, mesh)

  def run(self, state, start: int, steps: int):
    for first in range(start, start + steps, self.length):
      chunk = device_pipeline.put_chunk(device_pipeline.chunk_inputs(
          self.num_examples, self.spec, first, self.length, self.length), self.mesh)
      state, metrics = self.chunk_fn(state, self.split, chunk)
    return jax.block_until_ready((state, metrics))[0]


def main(argv):
  del argv
  if _STEPS.value < 1 or _DISPATCH.value < 1 or _STEPS.value % _DISPATCH.value:
    raise app.UsageError(f"--steps={_STEPS.value} must be a positive multiple of "
                         f"--steps_per_dispatch={_DISPATCH.value}")
  config = configs.with_overrides(configs.preset(_MODEL.value),
                                  [f"batch_size={_BATCH.value}", *_OVERRIDES.value],
                                  argument="--config_overrides")
  state, step_fn, split, mesh = build(config, _IMAGES.value)
  spec = input_pipeline.TrainBatchSpec(batch_size=config.batch_size, seed=0,
                                       padding=config.data.crop_padding, flip=config.data.flip,
                                       augment=config.data.augment)
  paths = {"host": HostPath(step_fn, split, spec, mesh, config.data.prefetch),
           "device": DevicePath(step_fn, split, spec, mesh, _DISPATCH.value)}
  states = {}
  compile_s = {}
  for name, path in paths.items():  # Compilation and warm-up (one chunk's worth of steps).
    t = time.perf_counter()
    states[name] = path.run(jax.tree.map(jnp.copy, state), 0, _DISPATCH.value)
    compile_s[name] = round(time.perf_counter() - t, 1)
  rates = {name: [] for name in paths}
  step = _DISPATCH.value
  for _ in range(_ROUNDS.value):
    for name, path in paths.items():
      t = time.perf_counter()
      states[name] = path.run(states[name], step, _STEPS.value)
      rates[name].append(_STEPS.value * config.batch_size / (time.perf_counter() - t))
    step += _STEPS.value
  medians = {name: statistics.median(r) for name, r in rates.items()}
  print(f"{'path':8s} {'images/s (median)':>18s} {'rounds':>30s} {'warm-up s':>10s}")
  for name in paths:
    print(f"{name:8s} {medians[name]:18.1f} {' '.join(f'{r:.1f}' for r in rates[name]):>30s} "
          f"{compile_s[name]:10.1f}")
  print(json.dumps({
      "model": _MODEL.value, "batch_size": config.batch_size,
      "dtype": config.model.options.get("dtype", "float32"), "device": jax.devices()[0].device_kind,
      "num_devices": mesh.size, "steps_per_round": _STEPS.value,
      "steps_per_dispatch": _DISPATCH.value, "rounds": _ROUNDS.value,
      "host_images_per_second": round(medians["host"], 1),
      "device_images_per_second": round(medians["device"], 1),
      "device_to_host_ratio": round(medians["device"] / medians["host"], 3),
      "warmup_seconds": compile_s, "load_average_1min": round(os.getloadavg()[0], 2)}), flush=True)


if __name__ == "__main__":
  define_flags()
  cli.run_main(main)
