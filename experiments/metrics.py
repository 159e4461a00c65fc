"""Metric writers (clu: logging + TensorBoard, plus metrics.jsonl) and the progress line.

`metrics.jsonl` in the work directory gets one JSON object per write: {"step": ..., <name>: value}.
clu's writers import TensorFlow; where it is not installed the run keeps metrics.jsonl and logging
(with a warning) instead of failing.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Mapping

from absl import logging
import numpy as np

METRICS_FILE = "metrics.jsonl"


def _to_python(value):
  value = np.asarray(value)
  return value.item() if value.ndim == 0 else value.tolist()


class JsonlWriter:
  """Appends {"step": step, **scalars} lines to <workdir>/metrics.jsonl (clu MetricWriter API)."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, METRICS_FILE)
    self._file = open(self.path, "a", encoding="utf-8")

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    record = {"step": int(step), **{k: _to_python(v) for k, v in scalars.items()}}
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()

  def write_hparams(self, hparams: Mapping[str, Any]):
    del hparams  # config.json holds them.

  def write_images(self, step, images):
    del step, images

  def write_videos(self, step, videos):
    del step, videos

  def write_audios(self, step, audios, *, sample_rate):
    del step, audios, sample_rate

  def write_texts(self, step, texts):
    del step, texts

  def write_histograms(self, step, arrays, num_buckets=None):
    del step, arrays, num_buckets

  def write_pointcloud(self, step, point_clouds, *, point_colors=None, configs=None):
    del step, point_clouds, point_colors, configs

  def flush(self):
    self._file.flush()

  def close(self):
    self._file.close()


class _LoggingOnlyWriter:
  """Fallback when clu (TensorFlow) is unavailable: scalars to the log, and to metrics.jsonl."""

  def __init__(self, writers):
    self._writers = writers

  def write_scalars(self, step, scalars):
    logging.info("[%d] %s", step, ", ".join(f"{k}={_to_python(v):.6g}" for k, v in scalars.items()))
    for w in self._writers:
      w.write_scalars(step, scalars)

  def write_hparams(self, hparams):
    for w in self._writers:
      w.write_hparams(hparams)

  def flush(self):
    for w in self._writers:
      w.flush()

  def close(self):
    for w in self._writers:
      w.close()


def create_writer(workdir: str, *, tensorboard: bool = True, enabled: bool = True):
  """A writer to logging, TensorBoard (if `tensorboard` and TensorFlow exist) and metrics.jsonl.

  `enabled=False` (non-chief hosts) writes to the log only.
  """
  writers = [JsonlWriter(workdir)] if enabled else []
  try:
    from clu import metric_writers  # pylint: disable=g-import-not-at-top  Imports TensorFlow.
  except ImportError as e:
    logging.warning("clu metric writers unavailable (%s: %s); TensorBoard event files are not "
                    "written, metrics go to %s and the log", type(e).__name__, e, METRICS_FILE)
    return _LoggingOnlyWriter(writers)
  default = metric_writers.create_default_writer(
      workdir if (tensorboard and enabled) else None, just_logging=not enabled, asynchronous=False)
  return metric_writers.MultiWriter([default, *writers])


def _format_duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Progress:
  """A progress line with throughput and ETA: a bar redrawn in place on a terminal, else logged."""

  def __init__(self, total_steps: int, start_step: int, *, stream=None, every_steps: int = 50):
    self.total_steps = total_steps
    self.stream = stream or sys.stderr
    self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
    self.every_steps = max(1, every_steps)
    self._last_step = start_step
    self._last_time = time.perf_counter()
    self.rate = float("nan")  # steps per second over the last interval

  def line(self, step: int, images_per_second: float, extra: str = "") -> str:
    remaining = (self.total_steps - step) / self.rate if self.rate > 0 else float("nan")
    frac = step / max(self.total_steps, 1)
    text = (f"step {step}/{self.total_steps} ({100 * frac:.1f}%), {images_per_second:.1f} img/s, "
            f"ETA {_format_duration(remaining)}{', ' + extra if extra else ''}")
    if self.tty:
      width = 24
      filled = int(round(width * frac))
      text = "[" + "#" * filled + "." * (width - filled) + "] " + text
    return text

  def update(self, step: int, batch_size: int, extra: str = "", force: bool = False):
    """Call after `step` steps are done; redraws on a terminal, logs every `every_steps`."""
    now = time.perf_counter()
    due = step - self._last_step >= self.every_steps
    if not (due or force or (self.tty and now - self._last_time > 1.0)):
      return
    if step > self._last_step:
      self.rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
      self._last_step, self._last_time = step, now
    text = self.line(step, self.rate * batch_size, extra)
    if self.tty:
      self.stream.write("\r" + text + "\x1b[K")
      self.stream.flush()
    else:
      logging.info("%s", text)

  def close(self):
    if self.tty:
      self.stream.write("\n")
      self.stream.flush()
