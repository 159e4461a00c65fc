"""Training and evaluation: `train_and_evaluate(config, workdir)`.

One readable loop (big_vision / Flax examples style):
  * the model is chosen by name from `xnorjax.models` and split into a graph definition and pure
    state pytrees (params, rest = BatchNorm statistics and RNG state), so that `train_step` and
    `eval_step` are pure functions jitted with `jax.jit`;
  * data-parallel over a 1-D `jax.sharding.Mesh` of all (or config.num_devices) devices: batches
    sharded along "data", state replicated; multi-host through `jax.distributed` (each host feeds
    its share of the global batch);
  * checkpoints (experiments/checkpointing.py): the latest few for resuming, the best on the
    held-out validation split; the test set is evaluated at the end, from the best checkpoint;
  * the batches are assembled on the host (experiments/input_pipeline.py, a prefetching thread)
    or, with config.data.on_device, on the devices from the host's indices (experiments/
    device_pipeline.py: the same batches, config.steps_per_dispatch steps scanned per dispatch,
    evaluated on the devices too); the loop itself, and what ends each log, evaluation and
    checkpoint interval, are in experiments/train_loop.py;
  * SIGTERM / SIGINT finish the current step (on device: the current chunk of steps), save a
    checkpoint and return;
  * a non-finite loss stops the run before anything is saved from it, naming the step.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import threading
import time
from typing import Any, Optional

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from experiments import checkpointing
from experiments import configs
from experiments import device_pipeline
from experiments import distill
from experiments import input_pipeline
from experiments import metrics as metrics_lib
from experiments import optim
from experiments import train_loop
from experiments.configs import default as default_config
import xnorjax
from xnorjax import models
from xnorjax import optim as xnorjax_optim

NonFiniteLossError = train_loop.NonFiniteLossError

RESULTS_FILE = "results.json"
CONFIG_FILE = "config.json"


class ConfigChangedError(ValueError):
  """A work directory with checkpoints was resumed with a configuration that trains differently."""


# Fields that may differ between an interrupted run and its resumption: where the data and caches
# are and which source reads them (the images themselves are checked by their fingerprint,
# `check_same_data`), how often to log, evaluate and checkpoint, evaluation batch size, devices and
# processes (data parallelism matches one device within float rounding), where the batches are
# assembled (host or device: the same batches) and how many steps run per dispatch. Every other field
# changes what is trained (schedule, model, data split and augmentation, seed, ...).
RESUMABLE_CHANGES = frozenset({
    "data.source", "data.path", "data.cache_dir", "data.tfds_name", "data.tfds_data_dir",
    "data.tfds_download", "data.prefetch", "data.on_device", "steps_per_dispatch",
    "eval_batch_size", "eval_every_steps", "eval_test_during_training", "log_every_steps",
    "checkpoint_every_steps", "keep_checkpoints", "num_devices", "distributed",
    "coordinator_address", "num_processes", "process_id", "tensorboard",
})


# ------------------------------------------------------------------------------------------------
# Model, state and the pure steps.
# ------------------------------------------------------------------------------------------------

def create_model(config: ml_collections.ConfigDict, seed: int):
  """The model named by config.model.name, built with config.model.options."""
  return models.create_model(config.model.name, num_classes=config.data.num_classes,
                             rngs=nnx.Rngs(params=seed, dropout=seed + 1),
                             **config.model.options.to_dict())


@dataclasses.dataclass(frozen=True)
class ModelParts:
  """A model split for pure functions: graph definitions (train / eval mode) and state pytrees."""
  train_graphdef: Any
  eval_graphdef: Any
  params: Any        # pure dict of nnx.Param values
  rest: Any          # pure dict of everything else (BatchNorm statistics, RNG state)
  binary_mask: Any   # xnorjax.optim.binary_kernel_mask(model)


def split_model(model) -> ModelParts:
  binary_mask = xnorjax_optim.binary_kernel_mask(model)
  model.eval()
  eval_graphdef, _, _ = nnx.split(model, nnx.Param, ...)
  model.train()
  train_graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  return ModelParts(train_graphdef, eval_graphdef, nnx.to_pure_dict(params),
                    nnx.to_pure_dict(rest), binary_mask)


def normalize(images, mean, std):
  """uint8 images -> float32, standardised per channel (mean, std on the 0..1 scale)."""
  return (images.astype(jnp.float32) * (1.0 / 255.0) - mean) / std


def cross_entropy(logits, labels, label_smoothing: float = 0.0):
  """Per-example softmax cross-entropy against (optionally smoothed) one-hot labels."""
  targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def train_step(state, images, labels, teacher_state=None, *, graphdef, tx, mean, std,
               label_smoothing, teacher_graphdef=None, distill_weight=0.0, distill_temperature=1.0):
  """One optimisation step on a (global) batch; returns the new state and batch metrics.

  With a teacher (`teacher_state`, its variables, and `teacher_graphdef`, eval mode) the loss is
  `distill.distillation_loss`'s, and the metrics add "ce_loss" and "distill_loss".
  """
  inputs = normalize(images, mean, std)
  soft_targets = (None if teacher_state is None
                  else distill.teacher_logits(teacher_graphdef, teacher_state, inputs))

  def loss_fn(params):
    model = nnx.merge(graphdef, params, state["rest"])
    logits = model(inputs)
    ce = cross_entropy(logits, labels, label_smoothing)
    terms = {}
    if soft_targets is None:
      loss = ce.mean()
    else:
      loss, soft = distill.distillation_loss(logits, soft_targets, ce, weight=distill_weight,
                                             temperature=distill_temperature)
      loss, terms = loss.mean(), {"ce_loss": ce.mean(), "distill_loss": soft.mean()}
    rest = nnx.to_pure_dict(nnx.state(model, nnx.Not(nnx.Param)))
    return loss, (logits, rest, terms)

  (loss, (logits, rest, terms)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
  return ({"params": params, "rest": rest, "opt_state": opt_state},
          {"loss": loss, "accuracy": accuracy, **terms})


def eval_step(params, rest, images, labels, mask, *, graphdef, mean, std):
  """Sums of loss and correct predictions over the unmasked examples of a batch."""
  model = nnx.merge(graphdef, params, rest)
  logits = model(normalize(images, mean, std))
  loss = cross_entropy(logits, labels)
  correct = jnp.argmax(logits, -1) == labels
  return {"loss_sum": jnp.sum(jnp.where(mask, loss, 0.0)),
          "correct": jnp.sum(jnp.where(mask, correct, False)),
          "count": jnp.sum(mask)}


# ------------------------------------------------------------------------------------------------
# Devices.
# ------------------------------------------------------------------------------------------------

def make_mesh(num_devices: int = -1) -> jax.sharding.Mesh:
  """A 1-D ("data",) mesh over all devices, or the first `num_devices` (single host only)."""
  devices = jax.devices()
  if num_devices not in (-1, 0):
    if jax.process_count() > 1:
      raise ValueError("config.num_devices must be -1 (all devices) on multi-host runs")
    if not 1 <= num_devices <= len(devices):
      raise ValueError(f"config.num_devices={num_devices}, but {len(devices)} devices are visible")
    devices = devices[:num_devices]
  return jax.sharding.Mesh(np.array(devices), ("data",))


def distributed_arguments(config: ml_collections.ConfigDict) -> dict:
  """`jax.distributed.initialize` keyword arguments from the config: the ones that are set.

  Unset (coordinator_address "", num_processes and process_id -1), JAX detects them from the
  cluster environment (or JAX_COORDINATOR_ADDRESS).
  """
  args = {}
  if config.coordinator_address:
    args["coordinator_address"] = config.coordinator_address
  if config.num_processes != -1:
    if config.num_processes < 1:
      raise ValueError(f"config.num_processes must be positive (or -1: detect), got "
                       f"{config.num_processes}")
    args["num_processes"] = config.num_processes
  if config.process_id != -1:
    if not 0 <= config.process_id < args.get("num_processes", config.process_id + 1):
      raise ValueError(f"config.process_id must be in [0, config.num_processes), got "
                       f"{config.process_id} of {config.num_processes}")
    args["process_id"] = config.process_id
  if args and not config.distributed:
    raise ValueError(f"config.{next(iter(args))} is set but config.distributed is False")
  return args


# ------------------------------------------------------------------------------------------------
# Evaluation.
# ------------------------------------------------------------------------------------------------

def evaluate(eval_fn, state, split: input_pipeline.Split, batch_size: int, sharding) -> dict:
  """Mean loss and accuracy over a whole split."""
  totals = None
  for images, labels, mask in input_pipeline.eval_batches(
      split, batch_size, process_index=jax.process_index(), process_count=jax.process_count()):
    batch = train_loop.global_batch(sharding, images, labels, mask)
    out = eval_fn(state["params"], state["rest"], *batch)
    totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
  return device_pipeline.mean_metrics(totals)


# ------------------------------------------------------------------------------------------------
# Stopping on SIGTERM / SIGINT.
# ------------------------------------------------------------------------------------------------

class StopRequest:
  """Turns SIGTERM and SIGINT into a flag checked after every step (a second SIGINT aborts)."""

  def __init__(self):
    self.signal_name: Optional[str] = None
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if self.signal_name is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signal_name = signal.Signals(signum).name
    logging.warning("Received %s: saving a checkpoint after this step, then exiting "
                    "(send SIGINT again to abort without saving)", self.signal_name)

  def requested(self) -> bool:
    flag = self.signal_name is not None
    if jax.process_count() > 1:  # Stop every host at the same step.
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      flag = bool(np.any(multihost_utils.process_allgather(np.array(flag))))
      if flag and self.signal_name is None:
        self.signal_name = "a signal on another host"
    return flag

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


# ------------------------------------------------------------------------------------------------
# Configuration checks.
# ------------------------------------------------------------------------------------------------

def check_config(config: ml_collections.ConfigDict, num_devices: int):
  """Clear errors for inconsistent settings, before any work is done."""
  # Unknown model (ValueError listing the known ones) or options it does not take.
  models.check_options(config.model.name, {"num_classes": 0, **config.model.options.to_dict()})
  if config.batch_size < 1 or config.batch_size % num_devices:
    raise ValueError(f"config.batch_size={config.batch_size} must be a positive multiple of the "
                     f"{num_devices} devices")
  if config.eval_batch_size < 1 or config.eval_batch_size % num_devices:
    raise ValueError(f"config.eval_batch_size={config.eval_batch_size} must be a positive multiple "
                     f"of the {num_devices} devices")
  if config.num_train_steps <= 0 and config.num_epochs <= 0:
    raise ValueError("set config.num_epochs or config.num_train_steps to a positive number")
  if config.optim.name not in optim.OPTIMIZERS:
    raise ValueError(f"config.optim.name={config.optim.name!r} is not one of "
                     f"{', '.join(optim.OPTIMIZERS)}")
  if config.optim.schedule not in optim.SCHEDULES:
    raise ValueError(f"config.optim.schedule={config.optim.schedule!r} is not one of "
                     f"{', '.join(optim.SCHEDULES)}")
  input_pipeline.resolve_source(config.data)  # Unknown source: ValueError.
  distill.check_config(config.distill)
  configs.check_settings(config)  # intervals, counts and rates (the command line checks it too)
  if not 0.0 <= config.label_smoothing < 1.0:
    raise ValueError(f"config.label_smoothing must be in [0, 1), got {config.label_smoothing}")
  if config.log_every_steps < 1:
    raise ValueError(f"config.log_every_steps must be >= 1, got {config.log_every_steps}")
  if config.steps_per_dispatch < 1:
    raise ValueError(f"config.steps_per_dispatch must be >= 1, got {config.steps_per_dispatch}")


def config_changes(saved: dict, config: ml_collections.ConfigDict) -> list[str]:
  """The fields outside RESUMABLE_CHANGES on which `config` differs from the `saved` config.json
  of a run, as 'field: old -> new' (sorted).

  A field the saved config lacks (added to the trainer after that run started) counts as unchanged
  while `config` holds the default configuration's value for it: that run trained with the
  behaviour the default reproduces.
  """
  old = _flat(saved)
  new = _flat(json.loads(config.to_json_best_effort()))
  defaults = _flat(json.loads(default_config.get_config().to_json_best_effort()))

  def changed(key):
    if key not in old and key in defaults and new.get(key) == defaults[key]:
      return False
    return old.get(key) != new.get(key)

  return [f"{key}: {old.get(key, '(absent)')} -> {new.get(key, '(absent)')}"
          for key in sorted(set(old) | set(new)) if key not in RESUMABLE_CHANGES and changed(key)]


def check_resumable(config: ml_collections.ConfigDict, workdir: str, allow_config_change: bool):
  """Raises ConfigChangedError if `workdir` holds checkpoints of a run whose config.json differs
  from `config` in a field that changes what is trained (resuming would silently mix two runs);
  with `allow_config_change` logs the changes instead."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not (checkpointing.has_checkpoints(workdir) and os.path.isfile(path)):
    return
  with open(path, encoding="utf-8") as f:
    try:
      saved = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path} (the configuration of the checkpoints in {workdir}) is not valid "
                       f"JSON: {e}; restore it, or choose another --workdir") from e
  changes = config_changes(saved, config)
  if changes:
    _refuse_or_warn(f"workdir {workdir} holds checkpoints of a run with another configuration ("
                    f"{'; '.join(changes)})", "Resume with the same configuration",
                    allow_config_change)


def check_same_data(saved: Optional[str], current: str, source: str, allow_config_change: bool):
  """Raises ConfigChangedError if the checkpoints were trained on other training and validation
  images than `source` gives now (fingerprints `saved` and `current`; a checkpoint without one
  passes), e.g. data.source='auto' resolving to TFDS's CIFAR-10 where it found a JPEG copy
  before; with `allow_config_change` logs it instead."""
  if saved is None or saved == current:
    return
  _refuse_or_warn(f"the training data ({source}, fingerprint {current}) differ from those the "
                  f"checkpoints were trained on (fingerprint {saved})",
                  "Point config.data at the same data", allow_config_change)


def _refuse_or_warn(problem: str, remedy: str, allow_config_change: bool):
  """ConfigChangedError for resuming despite `problem`, or with `allow_config_change` a warning."""
  if allow_config_change:
    logging.warning("Resuming anyway (--allow_config_change): %s", problem)
    return
  raise ConfigChangedError(f"{problem}. {remedy}, choose another --workdir, or pass "
                           "--allow_config_change to resume anyway (the result then matches no "
                           "single run).")


# ------------------------------------------------------------------------------------------------
# train_and_evaluate.
# ------------------------------------------------------------------------------------------------

def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       allow_config_change: bool = False) -> dict:
  """Trains config.model on config.data, checkpointing into `workdir`; returns the results.

  Resumes from the newest readable checkpoint in `workdir` if there is one, provided `config`
  trains as the run's config.json did (else ConfigChangedError, unless `allow_config_change`).
  Writes config.json, metrics.jsonl (and TensorBoard events), checkpoints and results.json into
  `workdir`, holding its lock (checkpointing.workdir_lock: a second process on the same
  directory gets WorkdirBusyError).
  """
  if config.get("two_stage", False):
    from experiments import two_stage  # pylint: disable=g-import-not-at-top (it calls back here)
    return two_stage.train_and_evaluate(config, workdir, allow_config_change=allow_config_change)
  distributed = distributed_arguments(config)  # Checked whether or not config.distributed.
  if config.distributed and not jax.distributed.is_initialized():
    jax.distributed.initialize(**distributed)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  with checkpointing.workdir_lock(workdir, enabled=jax.process_index() == 0):
    return _train_and_evaluate(config, workdir, allow_config_change)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                        allow_config_change: bool) -> dict:
  mesh = make_mesh(config.num_devices)
  check_config(config, mesh.size)
  check_resumable(config, workdir, allow_config_change)
  chief = jax.process_index() == 0
  if chief:
    _write_json_text(os.path.join(workdir, CONFIG_FILE),
                     config.to_json_best_effort(indent=2, sort_keys=True))
  data = input_pipeline.load_data(config.data, seed=config.seed)
  input_pipeline.log_data_summary(data)
  steps = train_loop.StepCounts.of(config, len(data.train))
  setup = _Setup.create(config, data, steps, mesh)
  ckpts = checkpointing.Checkpoints(workdir, keep=config.keep_checkpoints)
  fingerprint = input_pipeline.fingerprint(data.train, data.validation)
  state, start_step, best = _resume(ckpts, setup.state, fingerprint, data.source, steps,
                                    allow_config_change)
  writer = metrics_lib.create_writer(workdir, tensorboard=config.tensorboard, enabled=chief)
  if chief and start_step == 0:
    writer.write_hparams(_flat(config.to_dict()))
  intervals = train_loop.Intervals(
      steps=steps, batch_size=config.batch_size, learning_rate=setup.schedule,
      evaluate=functools.partial(_evaluate_during_training, setup.evaluate_split, data,
                                 config.eval_test_during_training),
      ckpts=ckpts, writer=writer, data_fingerprint=fingerprint, best=best, start_step=start_step)
  loop_start = time.perf_counter()
  try:
    with StopRequest() as stop:
      state, done, interrupted = _run(config, setup, data.train, state, start_step, intervals, stop)
    loop_seconds = time.perf_counter() - loop_start
  finally:
    intervals.close()
    ckpts.wait()
    writer.flush()

  results = {"model": config.model.name, "steps": steps.total, "last_step": done,
             "interrupted_by": interrupted, "best_step": intervals.best.step,
             "best_val_accuracy": (intervals.best.val_accuracy
                                   if intervals.best.step is not None else None),
             "seconds": _time_split(loop_seconds, intervals.seconds)}
  logging.info("Steps %d to %d in %.1f s: %s", start_step, done, results["seconds"]["loop"],
               ", ".join(f"{k} {v:.1f} s" for k, v in results["seconds"].items() if k != "loop"))
  if interrupted is None:
    results.update(_final_test(setup.evaluate_split, data, state, done, intervals, ckpts))
    writer.write_scalars(done, {"final_test_accuracy": results["test_accuracy"],
                                "final_test_loss": results["test_loss"]})
  if chief:
    _write_json_text(os.path.join(workdir, RESULTS_FILE), json.dumps(results, indent=2))
  writer.close()
  ckpts.close()
  results["state"] = state
  return results


def _time_split(loop: float, spent: dict) -> dict:
  """Where this process's training loop spent its wall time, in seconds (a resumed run: since its
  resume). "training" is the rest of the loop: steps, compilation, logging, the input pipeline."""
  return {"loop": loop, **spent, "training": loop - sum(spent.values())}


def _write_json_text(path: str, text: str):
  with open(path, "w", encoding="utf-8") as f:
    f.write(text + "\n")


@dataclasses.dataclass(frozen=True)
class _Setup:
  """The model's initial state, the optimiser's schedule, the jitted steps and the evaluator."""
  state: dict
  schedule: Any
  step_fn: Any            # train_step with everything but (state, images, labels, teacher) bound
  train_fn: Any           # step_fn jitted (host batches)
  evaluate_split: Any     # (state, split) -> {"loss", "accuracy"}
  teacher_state: Any
  mesh: jax.sharding.Mesh

  @classmethod
  def create(cls, config, data: input_pipeline.Data, steps: train_loop.StepCounts, mesh) -> _Setup:
    model = create_model(config, config.seed)
    if jax.process_index() == 0:
      xnorjax.summary(model, (1, config.data.image_size, config.data.image_size, 3),
                      print_fn=logging.info)
    parts = split_model(model)
    labels = optim.param_labels(parts.params, parts.binary_mask)
    schedule = optim.learning_rate_schedule(config.optim, steps.steps_per_epoch, steps.total)
    tx = optim.create_optimizer(config.optim, labels, schedule)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    params, rest = parts.params, parts.rest
    if config.get("init_from_workdir", ""):  # Stage 2 of experiments/two_stage.py.
      from experiments import two_stage  # pylint: disable=g-import-not-at-top
      params, rest = two_stage.initial_weights(config.init_from_workdir, params, rest)
    params = optim.initial_params(config.optim, params, labels)
    state = jax.device_put({"params": params, "rest": rest, "opt_state": tx.init(params)},
                           replicated)
    logging.info("Model %s: %d parameters; %d steps (%d per epoch) on %d device(s)",
                 config.model.name, sum(x.size for x in jax.tree.leaves(parts.params)),
                 steps.total, steps.steps_per_epoch, mesh.size)

    mean, std = jnp.asarray(data.mean), jnp.asarray(data.std)
    teacher = None
    if config.distill.teacher_workdir:
      teacher = distill.load_teacher(config,
                                     input_pipeline.fingerprint(data.train, data.validation))
      logging.info("Distilling from %s (%s, %s): weight %g, temperature %g",
                   config.distill.teacher_workdir, teacher.model_name, teacher.checkpoint,
                   config.distill.weight, config.distill.temperature)
    # The teacher's variables are an argument of the jitted steps (not constants folded into them).
    teacher_state = None if teacher is None else jax.device_put(teacher.state, replicated)
    step_fn = functools.partial(train_step, graphdef=parts.train_graphdef, tx=tx, mean=mean,
                                std=std, label_smoothing=config.label_smoothing,
                                teacher_graphdef=None if teacher is None else teacher.graphdef,
                                distill_weight=config.distill.weight,
                                distill_temperature=config.distill.temperature)
    train_fn = jax.jit(step_fn, donate_argnums=0, out_shardings=(replicated, replicated))
    eval_step_fn = functools.partial(eval_step, graphdef=parts.eval_graphdef, mean=mean, std=std)
    if config.data.on_device:
      evaluate_split = device_pipeline.Evaluator(eval_step_fn, config.eval_batch_size, mesh)
    else:
      batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
      evaluate_split = functools.partial(
          _evaluate_split, jax.jit(eval_step_fn, out_shardings=replicated),
          config.eval_batch_size, batch_sharding)
    return cls(state, schedule, step_fn, train_fn, evaluate_split, teacher_state, mesh)


def _resume(ckpts: checkpointing.Checkpoints, state, data_fingerprint: str, source: str,
            steps: train_loop.StepCounts, allow_config_change: bool):
  """(state, start step, best so far) from the newest readable checkpoint, or the initial ones."""
  restored, record = ckpts.restore_latest(state)
  if restored is None:
    return state, 0, train_loop.Best()
  check_same_data(record.get("data_fingerprint"), data_fingerprint, source, allow_config_change)
  start_step = ckpts.latest_step()
  best = train_loop.Best(record.get("best_val_accuracy", -1.0), record.get("best_step"))
  if best.step is not None and best.step not in ckpts.best_steps():
    logging.warning("The best checkpoint (step %d) was not saved completely (the run was killed "
                    "while saving it); selecting among the evaluations from here on", best.step)
    best = train_loop.Best()
  logging.info("Resumed from %s at step %d (epoch %.2f)", ckpts.latest_dir, start_step,
               steps.epoch(start_step))
  return restored, start_step, best


def _run(config, setup: _Setup, train, state, start_step: int, intervals: train_loop.Intervals,
         stop):
  """The steps from `start_step` on, on the host's batches or on the devices (config.data)."""
  spec = input_pipeline.TrainBatchSpec(
      batch_size=config.batch_size, seed=config.seed, padding=config.data.crop_padding,
      flip=config.data.flip, augment=config.data.augment, process_index=jax.process_index(),
      process_count=jax.process_count())
  if config.data.on_device:
    return train_loop.run_on_device(
        state, step_fn=setup.step_fn, config=config, mesh=setup.mesh, train_split=train, spec=spec,
        teacher_state=setup.teacher_state, start_step=start_step, intervals=intervals, stop=stop)
  batches = input_pipeline.Prefetcher(
      input_pipeline.train_batches(train, spec, start_step, intervals.steps.total),
      config.data.prefetch)
  try:
    return train_loop.run_on_host(
        state, train_fn=setup.train_fn, batches=batches,
        batch_sharding=jax.sharding.NamedSharding(setup.mesh, jax.sharding.PartitionSpec("data")),
        teacher_state=setup.teacher_state, start_step=start_step, intervals=intervals, stop=stop)
  finally:
    batches.close()


def _evaluate_during_training(evaluate_split, data, with_test: bool, state) -> dict:
  scalars = {}
  if data.validation is not None:
    val = evaluate_split(state, data.validation)
    scalars.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
  if with_test:
    test = evaluate_split(state, data.test)
    scalars.update(test_loss=test["loss"], test_accuracy=test["accuracy"])
  return scalars


def _final_test(evaluate_split, data, state, done: int, intervals: train_loop.Intervals,
                ckpts: checkpointing.Checkpoints) -> dict:
  """Test loss and accuracy of the checkpoint selected on validation, and of the last step."""
  last_eval, best = intervals.last_eval, intervals.best
  if last_eval.get("step") == done and "test_accuracy" in last_eval:
    last = {"accuracy": last_eval["test_accuracy"], "loss": last_eval["test_loss"]}
  else:
    last = evaluate_split(state, data.test)
  results = {"test_accuracy_last": last["accuracy"], "test_loss_last": last["loss"]}
  selected = last
  if data.validation is not None and best.step is not None and best.step != done:
    try:
      best_state, _ = ckpts.restore_best(state)
    except Exception as e:  # pylint: disable=broad-except  # damaged after it was selected
      logging.warning("The best checkpoint (step %d) in %s is unreadable (%s: %s); the test "
                      "accuracy reported is the last step's", best.step, ckpts.best_dir,
                      type(e).__name__, " ".join(str(e).split())[:300])
      results.update(best_step=None, best_val_accuracy=None)
    else:
      selected = evaluate_split(best_state, data.test)
  results.update(test_accuracy=selected["accuracy"], test_loss=selected["loss"])
  selected_step = results.get("best_step", best.step)
  selected_val = results.get("best_val_accuracy",
                             best.val_accuracy if best.step is not None else None)
  logging.info("Test accuracy %.4f (checkpoint of step %s, selected on validation accuracy %s); "
               "last step's test accuracy %.4f", results["test_accuracy"], selected_step,
               selected_val, results["test_accuracy_last"])
  return results


def _evaluate_split(eval_fn, batch_size, sharding, state, split):
  return evaluate(eval_fn, state, split, batch_size, sharding)


def _flat(d: dict) -> dict:
  """Config fields by path, values other than scalars as strings (hparams, comparisons)."""
  return {k: v if isinstance(v, (int, float, str, bool)) else str(v)
          for k, v in configs.flat_fields(d).items()}
