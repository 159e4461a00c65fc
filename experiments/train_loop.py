"""The training loop of experiments/trainer.py: its two drivers and what ends an interval.

`Intervals` holds everything that happens between steps, each in its own method: the finite-loss
check, the training-metrics log (`log_train`), and `after_steps`: the evaluation on validation (and
the best checkpoint), the periodic checkpoint and a stop request's checkpoint. The two drivers run
the steps and call it:

  run_on_host     batches assembled by input_pipeline's prefetching thread, one step per dispatch;
  run_on_device   the training split held on the devices (experiments/device_pipeline.py),
                  `jax.lax.scan` over chunks of up to config.steps_per_dispatch steps that end on
                  every log, evaluation and checkpoint step, so both land on the same steps.

Losses are read back one dispatch late (the device runs ahead), and all pending ones are checked
(`settle`) before anything is logged or saved. Both drivers return (state, steps done, the
stopping signal or None).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Any, Callable, Optional

from absl import logging
import jax
import ml_collections
import numpy as np

from experiments import checkpointing
from experiments import device_pipeline
from experiments import input_pipeline
from experiments import metrics as metrics_lib


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or infinite."""


@dataclasses.dataclass(frozen=True)
class StepCounts:
  """How long the run is and how often it logs, evaluates and checkpoints (in steps)."""
  steps_per_epoch: int
  total: int
  log_every: int
  eval_every: int
  checkpoint_every: int

  @classmethod
  def of(cls, config: ml_collections.ConfigDict, num_train: int) -> StepCounts:
    steps_per_epoch = num_train // config.batch_size
    if steps_per_epoch < 1:
      raise ValueError(f"config.batch_size={config.batch_size} exceeds the {num_train} training "
                       "images")
    total = (config.num_train_steps if config.num_train_steps > 0
             else int(round(config.num_epochs * steps_per_epoch)))
    eval_every = config.eval_every_steps if config.eval_every_steps > 0 else steps_per_epoch
    checkpoint_every = (config.checkpoint_every_steps if config.checkpoint_every_steps > 0
                        else eval_every)
    return cls(steps_per_epoch, total, config.log_every_steps, eval_every, checkpoint_every)

  def epoch(self, step: int) -> float:
    return step / self.steps_per_epoch

  def is_log_step(self, step: int) -> bool:
    return step % self.log_every == 0 or step == self.total


@dataclasses.dataclass
class Best:
  """The best validation accuracy so far and its step (None: none selected yet)."""
  val_accuracy: float = -1.0
  step: Optional[int] = None


class Intervals:
  """What ends a step: loss checks, logs, evaluations, checkpoints, stop requests.

  `evaluate(state) -> scalars` evaluates the validation (and, if asked, test) split; its
  "val_accuracy" selects the best checkpoint. Every checkpoint's record carries the data
  fingerprint and the best so far, which a resumed run reads back. `seconds` adds up the wall
  time spent in evaluations and in checkpoint saves (their blocking part: starting a save and
  waiting for the previous one), which on a fast accelerator can rival the training itself.
  """

  def __init__(self, *, steps: StepCounts, batch_size: int, learning_rate: Callable[[int], Any],
               evaluate: Callable[[Any], dict], ckpts: checkpointing.Checkpoints, writer,
               data_fingerprint: str, best: Best, start_step: int):
    self.steps, self.batch_size, self.learning_rate = steps, batch_size, learning_rate
    self.evaluate, self.ckpts, self.writer = evaluate, ckpts, writer
    self.data_fingerprint, self.best = data_fingerprint, best
    self.last_eval: dict = {}
    self.seconds = {"evaluation": 0.0, "checkpoint_saves": 0.0}
    self.progress = metrics_lib.Progress(steps.total, start_step, every_steps=steps.log_every)

  def record(self, step: int) -> dict:
    return {"step": step, "epoch": self.steps.epoch(step),
            "data_fingerprint": self.data_fingerprint,
            "best_val_accuracy": self.best.val_accuracy, "best_step": self.best.step}

  def check_finite(self, step: int, loss):
    """NonFiniteLossError naming `step` and the last good checkpoint if `loss` is NaN or inf."""
    loss = float(loss)
    if np.isfinite(loss):
      return
    saved = self.ckpts.latest_step()
    where = (f"the last good checkpoint is step {saved} in {self.ckpts.step_dir(saved)}"
             if saved is not None else "no checkpoint was saved before it")
    raise NonFiniteLossError(
        f"training loss is {loss} at step {step} (epoch {self.steps.epoch(step):.2f}); stopped "
        f"without saving; {where}. Lower config.optim.learning_rate or enable "
        "config.optim.grad_clip_norm")

  def log_train(self, done: int, host_metrics: list[dict], steps: int, elapsed: float,
                produced: int, producer: float, waited: float):
    """Logs the training metrics of the steps since the last log: `steps` of them timed over
    `elapsed` seconds, while the input pipeline made `produced` batches in `producer` seconds and
    the loop waited `waited` seconds for them. A window whose steps were all left out of the
    timing (the compiling dispatch, when it fills the whole window) logs no throughput: it has
    none to report, and a 0 would pull down a run's median."""
    mean = lambda k: float(np.mean([m[k] for m in host_metrics]))
    scalars = {
        "epoch": self.steps.epoch(done),
        "learning_rate": float(self.learning_rate(done - 1)),
        "train_loss": mean("loss"),
        "train_accuracy": mean("accuracy"),
        **{f"train_{k}": mean(k) for k in host_metrics[0] if k not in ("loss", "accuracy")},
    }
    extra = f"loss {scalars['train_loss']:.4f}, acc {scalars['train_accuracy']:.4f}"
    if steps > 0:
      scalars.update({
          "images_per_second": steps * self.batch_size / max(elapsed, 1e-9),
          "input_images_per_second": (produced * self.batch_size / producer
                                      if producer > 0 else float("inf")),
          "input_wait_fraction": waited / max(elapsed, 1e-9),
      })
      extra += f", input {scalars['input_images_per_second']:.0f} img/s"
    self.writer.write_scalars(done, scalars)
    self.progress.update(done, self.batch_size, force=True, extra=extra)

  def after_steps(self, done: int, state, settle: Callable[[], None], stop) -> Optional[str]:
    """The evaluation and checkpoint due after `done` steps, and a stop request's checkpoint;
    `settle()` first checks the losses not checked yet. Returns the stopping signal, or None."""
    is_last = done == self.steps.total
    if done % self.steps.eval_every == 0 or is_last:
      settle()
      self._evaluate(done, state)
    if done % self.steps.checkpoint_every == 0 or is_last:
      settle()
      self._save(done, state)
    if stop.requested():
      settle()
      self._save(done, state)
      logging.warning("Stopped by %s after step %d; checkpoint saved in %s. Rerun the same "
                      "command to resume.", stop.signal_name, done, self.ckpts.latest_dir)
      return stop.signal_name
    return None

  @contextlib.contextmanager
  def _timed(self, kind: str):
    """Adds the block's wall time to self.seconds[kind]."""
    start = time.perf_counter()
    try:
      yield
    finally:
      self.seconds[kind] += time.perf_counter() - start

  def _save(self, done: int, state):
    with self._timed("checkpoint_saves"):
      self.ckpts.save(done, state, self.record(done))

  def _evaluate(self, done: int, state):
    with self._timed("evaluation"):
      scalars = {"epoch": self.steps.epoch(done), **self.evaluate(state)}
    if "val_accuracy" in scalars and scalars["val_accuracy"] > self.best.val_accuracy:
      self.best = Best(scalars["val_accuracy"], done)
      with self._timed("checkpoint_saves"):
        self.ckpts.save_best(done, state, self.record(done), scalars["val_accuracy"])
    scalars["best_val_accuracy"] = self.best.val_accuracy
    self.last_eval = {"step": done, **scalars}
    self.writer.write_scalars(done, scalars)
    logging.info("Evaluation at step %d: %s", done,
                 ", ".join(f"{k} {v:.4f}" for k, v in scalars.items()))

  def close(self):
    self.progress.close()


def global_batch(sharding, *local_arrays) -> tuple[jax.Array, ...]:
  """Each process's share of a batch (`local_arrays`) as global arrays with `sharding`."""
  return tuple(jax.make_array_from_process_local_data(sharding, a) for a in local_arrays)


@dataclasses.dataclass
class _Window:
  """The steps since the last log: their metrics (device arrays) and the clock and input-pipeline
  counters when the window opened."""
  start: float
  producer: float = 0.0
  waited: float = 0.0
  produced: int = 0
  metrics: list = dataclasses.field(default_factory=list)
  steps: int = 0


def run_on_host(state, *, train_fn, batches: input_pipeline.Prefetcher, batch_sharding,
                teacher_state, start_step: int, intervals: Intervals, stop):
  """One jitted `train_fn(state, images, labels, teacher_state)` per batch of `batches`."""
  steps = intervals.steps
  open_window = lambda: _Window(time.perf_counter(), batches.producer_seconds,
                                batches.wait_seconds, batches.items)
  window = open_window()
  pending = None  # (step, loss) of the last dispatched step, checked after the next dispatch.
  settle = lambda: intervals.check_finite(*pending)
  done = start_step
  for step, images, labels in batches:
    images, labels = global_batch(batch_sharding, images, labels)
    state, metrics = train_fn(state, images, labels, teacher_state)
    if pending is not None:
      settle()
    pending = (step + 1, metrics["loss"])
    window.metrics.append(metrics)
    window.steps += 1
    done = step + 1
    if done == start_step + 1:  # Leave compilation out of the throughput (not the metrics).
      jax.block_until_ready(metrics)
      window = dataclasses.replace(open_window(), metrics=window.metrics)
    if steps.is_log_step(done):
      settle()
      intervals.log_train(done, jax.device_get(window.metrics), window.steps,
                          time.perf_counter() - window.start, batches.items - window.produced,
                          batches.producer_seconds - window.producer,
                          batches.wait_seconds - window.waited)
      window = open_window()
    else:
      intervals.progress.update(done, intervals.batch_size)
    interrupted = intervals.after_steps(done, state, settle, stop)
    if interrupted:
      return state, done, interrupted
  if pending is not None:
    settle()
  return state, done, None


def run_on_device(state, *, step_fn, config: ml_collections.ConfigDict, mesh, train_split,
                  spec: input_pipeline.TrainBatchSpec, teacher_state, start_step: int,
                  intervals: Intervals, stop):
  """Chunks of up to config.steps_per_dispatch steps of `step_fn`, scanned on the devices.

  A stop request (SIGTERM / SIGINT) is seen after the chunk in flight, at most
  config.steps_per_dispatch steps later; the resumed run continues from that step with the same
  batches.
  """
  steps = intervals.steps
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  chunk_fn = jax.jit(device_pipeline.make_train_chunk(step_fn, padding=spec.padding,
                                                      batch_sharding=batch_sharding),
                     donate_argnums=0, out_shardings=(replicated, replicated))
  on_device = device_pipeline.to_device(train_split, mesh)
  pending = None  # (first step, metrics, number of valid steps) of the last dispatched chunk.

  def settle():
    if pending is not None:
      first, metrics, count = pending
      for i, loss in enumerate(np.asarray(jax.device_get(metrics["loss"]))[:count]):
        intervals.check_finite(first + i + 1, loss)

  # `producer` / `waited`: the main thread builds and sends the index arrays while the previous
  # chunk runs, so their time bounds the device's wait for input from above.
  window = _Window(time.perf_counter())
  done = start_step
  while done < steps.total:
    t = time.perf_counter()
    end = device_pipeline.chunk_end(done, steps.total, config.steps_per_dispatch, steps.log_every,
                                    steps.eval_every, steps.checkpoint_every)
    chunk = device_pipeline.put_chunk(
        device_pipeline.chunk_inputs(len(train_split), spec, done, end - done,
                                     config.steps_per_dispatch), mesh)
    window.producer += time.perf_counter() - t
    state, metrics = chunk_fn(state, on_device, chunk, teacher_state)
    settle()
    pending = (done, metrics, end - done)
    window.metrics.append((metrics, end - done))
    window.steps += end - done
    if done == start_step:  # Leave compilation out of the throughput (not the metrics).
      jax.block_until_ready(metrics)
      window = _Window(time.perf_counter(), metrics=window.metrics)
    done = end
    if steps.is_log_step(done):
      settle()
      host = [{k: v[i] for k, v in m.items()}
              for m, count in jax.device_get(window.metrics) for i in range(count)]
      intervals.log_train(done, host, window.steps, time.perf_counter() - window.start,
                          window.steps, window.producer, window.producer)
      window = _Window(time.perf_counter())
    else:
      intervals.progress.update(done, intervals.batch_size)
    interrupted = intervals.after_steps(done, state, settle, stop)
    if interrupted:
      return state, done, interrupted
  settle()
  return state, done, None
