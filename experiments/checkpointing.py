"""Checkpoints with orbax `CheckpointManager`: the latest few (for resuming) and the best on validation.

  <workdir>/checkpoints/<step>   periodic and on SIGTERM/SIGINT; the newest is resumed on restart.
  <workdir>/best/<step>          the state with the highest validation accuracy so far.

Each checkpoint holds the whole training state (step, parameters, BatchNorm statistics and RNG
state, optimiser state) and a small JSON record (best validation accuracy and its step, epoch), so
that a resumed run continues exactly where it stopped. The test set never selects a checkpoint.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

LATEST_DIR = "checkpoints"
BEST_DIR = "best"


def has_checkpoints(workdir: str) -> bool:
  """Whether `workdir` holds a finished resumable checkpoint (orbax names them by step)."""
  latest = os.path.join(workdir, LATEST_DIR)
  return os.path.isdir(latest) and any(
      name.isdigit() and os.path.isdir(os.path.join(latest, name)) for name in os.listdir(latest))


def _abstract(state):
  """ShapeDtypeStructs (with the shardings of `state`) to restore into."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)


class Checkpoints:
  """The two managers of a work directory."""

  def __init__(self, workdir: str, *, keep: int = 2):
    if keep < 1:
      raise ValueError(f"config.keep_checkpoints must be >= 1, got {keep}")
    self.latest_dir = os.path.abspath(os.path.join(workdir, LATEST_DIR))
    self.best_dir = os.path.abspath(os.path.join(workdir, BEST_DIR))
    # Own barrier names per manager: on several processes both save the same step at once, and
    # orbax's barriers are named by step ("Barrier _async_write_complete.12 is already ongoing").
    self.latest = ocp.CheckpointManager(
        self.latest_dir, options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True,
            multiprocessing_options=ocp.options.MultiprocessingOptions(
                barrier_sync_key_prefix=LATEST_DIR)))
    self.best = ocp.CheckpointManager(
        self.best_dir, options=ocp.CheckpointManagerOptions(
            max_to_keep=1, create=True, best_fn=lambda m: m["val_accuracy"], best_mode="max",
            multiprocessing_options=ocp.options.MultiprocessingOptions(
                barrier_sync_key_prefix=BEST_DIR)))

  @staticmethod
  def _args(state, record):
    return ocp.args.Composite(state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record))

  def save(self, step: int, state, record: dict[str, Any]):
    """Saves `state` as the latest checkpoint at `step` (replacing one at the same step)."""
    if step in self.latest.all_steps():
      return
    self.latest.save(step, args=self._args(state, record), force=True)

  def save_best(self, step: int, state, record: dict[str, Any], val_accuracy: float):
    self.best.save(step, args=self._args(state, record), metrics={"val_accuracy": float(val_accuracy)},
                   force=True)

  def latest_step(self) -> Optional[int]:
    return self.latest.latest_step()

  def best_step(self) -> Optional[int]:
    return self.best.best_step()

  def _restore(self, manager, step, target_state):
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract(target_state)), record=ocp.args.JsonRestore()))
    return restored.state, dict(restored.record)

  def restore_latest(self, target_state):
    """(state, record) of the newest checkpoint, or (None, {}) when there is none."""
    step = self.latest_step()
    if step is None:
      return None, {}
    return self._restore(self.latest, step, target_state)

  def restore_best(self, target_state):
    """(state, record) of the best checkpoint on validation, or (None, {}) when there is none."""
    step = self.best_step()
    if step is None:
      return None, {}
    return self._restore(self.best, step, target_state)

  def wait(self):
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self):
    self.latest.close()
    self.best.close()
