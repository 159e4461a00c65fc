"""Checkpoints with orbax `CheckpointManager`: the latest few (for resuming) and the best on validation.

  <workdir>/checkpoints/<step>   periodic and on SIGTERM/SIGINT; the newest is resumed on restart.
  <workdir>/best/<step>          the state with the highest validation accuracy so far.

Each checkpoint holds the whole training state (step, parameters, BatchNorm statistics and RNG
state, optimiser state) and a small JSON record (best validation accuracy and its step, epoch), so
that a resumed run continues exactly where it stopped. The test set never selects a checkpoint.

Faults:
  * a save that cannot be written (disk full, read-only directory) raises CheckpointSaveError
    naming the step's directory; orbax writes into a temporary directory and renames it when
    done, so the previous checkpoints stay intact (old ones are removed only after a save succeeds);
  * a checkpoint that is unfinished (orbax's `<step>.orbax-checkpoint-tmp*` directories, a step
    directory without orbax's commit marker) or unreadable (truncated files, garbage bytes) is
    skipped with one warning naming it, and the newest readable one is used; a training run
    moves the skipped ones that are newer aside (`<name>.unreadable`, never deleted) so that it
    can save those steps again; UnreadableCheckpointError when none is readable;
  * `workdir_lock`: one training process per work directory (an advisory `flock`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import socket
from typing import Any, Callable, Iterator, Optional

from absl import logging
import jax
import orbax.checkpoint as ocp

LATEST_DIR = "checkpoints"
BEST_DIR = "best"
LOCK_FILE = "train.lock"
COMMIT_MARKER = "commit_success.txt"  # orbax writes it into a step directory just before renaming
TMP_MARKER = ".orbax-checkpoint-tmp"  # orbax's suffix of a save in progress
UNREADABLE_SUFFIX = ".unreadable"


class WorkdirBusyError(RuntimeError):
  """Another process is training in the same work directory."""


class CheckpointSaveError(RuntimeError):
  """A checkpoint could not be written (disk full, read-only directory, ...).

  `abandons_threads`: orbax's background threads of the failed save may be left waiting for
  signals until their timeout, so the command line exits without joining them (cli.exit_now)."""

  abandons_threads = True


class UnreadableCheckpointError(ValueError):
  """A checkpoint directory holds checkpoints, but none of them can be read."""


class ModelMismatchError(ValueError):
  """A readable checkpoint of another model: an older checkpoint would not match either."""


# ------------------------------------------------------------------------------------------------
# One training process per work directory.
# ------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def workdir_lock(workdir: str, enabled: bool = True) -> Iterator[None]:
  """Holds an exclusive advisory lock on <workdir>/train.lock, or raises WorkdirBusyError.

  `fcntl.flock` belongs to the open file: the kernel releases it when the file is closed or the
  process ends in any way (SIGKILL included), so a lock file left behind is never stale. The file
  records the holder's pid and host for the error message. `enabled=False` (non-chief processes
  of a multi-host run, which share the chief's directory) does nothing.
  """
  if not enabled:
    yield
    return
  path = os.path.join(workdir, LOCK_FILE)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
      raise WorkdirBusyError(
          f"workdir {workdir} is in use by another training process ({holder} holds {path}); "
          "wait for it to finish or stop it, or choose another --workdir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    yield
  finally:
    os.close(fd)  # Releases the lock.


# ------------------------------------------------------------------------------------------------
# Finding the newest readable checkpoint.
# ------------------------------------------------------------------------------------------------

def brief(error: BaseException, limit: int = 240) -> str:
  """`error` as one short line: its type and first line, and the OS error tensorstore reports."""
  text = str(error).strip()
  line = text.splitlines()[0] if text else ""
  if len(line) > limit:
    line = line[:limit] + "..."
  code = re.search(r"os_error_code='?(\d+)", text)
  if code and not isinstance(error, OSError):
    line += f" ({os.strerror(int(code.group(1)))})"
  return f"{type(error).__name__}: {line}"


def _step_of(name: str) -> Optional[int]:
  """The step of a directory name "<step>" or "<step>.orbax-checkpoint-tmp*", else None."""
  head = name.split(".", 1)[0]
  if (not head.isdigit() or UNREADABLE_SUFFIX in name
      or (name != head and not name[len(head):].startswith(TMP_MARKER))):
    return None
  return int(head)


def scan(directory: str) -> tuple[list[int], list[tuple[int, str]]]:
  """(steps of finished checkpoints, newest first; [(step, path)] of unfinished ones).

  Finished: a step directory with orbax's commit marker. Unfinished: orbax's temporary
  directories and step directories without the marker (a save cut short, a partial copy).
  """
  finished, unfinished = [], []
  names = os.listdir(directory) if os.path.isdir(directory) else []
  for name in names:
    path = os.path.join(directory, name)
    step = _step_of(name)
    if step is None or not os.path.isdir(path):
      continue
    if name.isdigit() and os.path.isfile(os.path.join(path, COMMIT_MARKER)):
      finished.append(step)
    else:
      unfinished.append((step, path))
  return sorted(finished, reverse=True), sorted(unfinished, reverse=True)


def restore_newest_readable(directory: str, steps: list[int], restore_step: Callable[[int], Any]):
  """(step, restore_step(step), failures) for the first of `steps` (newest first) that restores.

  `failures` are the newer ones that did not, as [(step, path, reason)], for the caller to report.
  (None, None, []) without steps; UnreadableCheckpointError, naming every directory tried, when
  none restores. ModelMismatchError is raised at once.
  """
  failures = []
  for step in steps:
    path = os.path.join(directory, str(step))
    try:
      return step, restore_step(step), failures
    except ModelMismatchError:
      raise
    except Exception as e:  # pylint: disable=broad-except  # Any damage: try the next older one.
      failures.append((step, path, brief(e)))
  if failures:
    raise UnreadableCheckpointError(
        f"no readable checkpoint in {directory}: "
        + "; ".join(f"{path} ({reason})" for _, path, reason in failures)
        + ". Nothing was deleted: restore a good copy, or move them away to start afresh")
  return None, None, []


def move_aside(path: str) -> str:
  """Renames `path` to `<path>.unreadable` (or `.unreadable.<n>` if taken); returns the new path."""
  target, n = path + UNREADABLE_SUFFIX, 1
  while os.path.exists(target):
    target, n = f"{path}{UNREADABLE_SUFFIX}.{n}", n + 1
  os.rename(path, target)
  return target


# ------------------------------------------------------------------------------------------------
# The checkpoints of a training run.
# ------------------------------------------------------------------------------------------------

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
    self.best = self._open_best()
    self._pending = {}  # id(manager) -> the step of its save in flight
    self._failed = False  # a save failed: the run stops, later saves and waits are skipped

  def _open_best(self):
    """The best-on-validation manager. It reads every checkpoint's metrics when it starts: those
    whose metrics are unreadable are moved aside first (logged), as they cannot be ranked."""
    def open_manager():
      return ocp.CheckpointManager(
          self.best_dir, options=ocp.CheckpointManagerOptions(
              max_to_keep=1, create=True, best_fn=lambda m: m["val_accuracy"], best_mode="max",
              multiprocessing_options=ocp.options.MultiprocessingOptions(
                  barrier_sync_key_prefix=BEST_DIR)))
    try:
      return open_manager()
    except Exception:  # pylint: disable=broad-except
      for step in scan(self.best_dir)[0]:
        path = os.path.join(self.best_dir, str(step))
        try:
          with open(os.path.join(path, "metrics", "metrics"), encoding="utf-8") as f:
            json.load(f)
        except (OSError, ValueError) as e:
          logging.warning("Checkpoint %s has unreadable metrics (%s); moved it aside to %s",
                          path, brief(e), move_aside(path))
      return open_manager()

  @staticmethod
  def _args(state, record):
    return ocp.args.Composite(state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record))

  def save(self, step: int, state, record: dict[str, Any]):
    """Starts saving `state` as the latest checkpoint at `step` (none if it is saved already).

    Saves are asynchronous: a failure surfaces at the next save or `wait`, as CheckpointSaveError
    naming the step that failed.
    """
    self._wait(self.latest)
    if step in self.latest.all_steps():
      return
    with self._saving(self.latest, step):
      self.latest.save(step, args=self._args(state, record), force=True)

  def save_best(self, step: int, state, record: dict[str, Any], val_accuracy: float):
    self._wait(self.best)
    with self._saving(self.best, step):
      self.best.save(step, args=self._args(state, record),
                     metrics={"val_accuracy": float(val_accuracy)}, force=True)

  @contextlib.contextmanager
  def _saving(self, manager, step: int):
    """Turns a failing save of `step` into CheckpointSaveError (and remembers the step for a
    failure that surfaces later, from orbax's background thread)."""
    self._pending[id(manager)] = step
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except  # tensorstore raises ValueError
      raise self._save_error(manager, step, e) from e

  def _wait(self, manager):
    if self._failed:
      # After a failed save orbax's background threads may wait for a signal that never comes
      # (a step directory that could not be created): waiting would hang until their timeout.
      return
    try:
      manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(manager, self._pending.get(id(manager)), e) from e

  def _save_error(self, manager, step: Optional[int], error: BaseException) -> CheckpointSaveError:
    """The error for a failed save of `step` by `manager`, naming the checkpoint to resume from."""
    self._failed = True
    directory = str(manager.directory)
    kept = [s for s in scan(self.latest_dir)[0] if manager is not self.latest or s != step]
    intact = (f"the latest checkpoint {self.step_dir(kept[0])} is intact" if kept
              else "no earlier checkpoint was saved")
    return CheckpointSaveError(
        f"could not save checkpoint {os.path.join(directory, str(step))} ({brief(error)}); "
        f"{intact}. Free disk space or make {directory} writable, then rerun the same command "
        "to resume")

  def latest_step(self) -> Optional[int]:
    return self.latest.latest_step()

  def best_step(self) -> Optional[int]:
    return self.best.best_step()

  def best_steps(self) -> list[int]:
    """The steps of the finished checkpoints in the best-on-validation directory."""
    return scan(self.best_dir)[0]

  def _restore(self, manager, step, target_state):
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract(target_state)), record=ocp.args.JsonRestore()))
    return restored.state, dict(restored.record)

  def restore_latest(self, target_state):
    """(state, record) of the newest readable checkpoint, or (None, {}) when there is none.

    For resuming: unfinished or unreadable checkpoints newer than the restored one (in both
    managers' directories) are moved aside, logged, so that this run saves those steps afresh
    (orbax would delete a leftover temporary directory of the step it saves, and its
    `max_to_keep` clean-up would delete an unreadable checkpoint); `latest_step()` is then the
    restored step. UnreadableCheckpointError (and nothing moved) when none is readable.
    """
    finished, unfinished = scan(self.latest_dir)
    step, restored, failures = restore_newest_readable(
        self.latest_dir, finished, lambda s: self._restore(self.latest, s, target_state))
    bad = [(s, p, f"unreadable: {reason}") for s, p, reason in failures]
    bad += [(s, p, "unfinished") for s, p in unfinished + scan(self.best_dir)[1]
            if step is None or s > step]
    resume = f"resuming from step {step}" if step is not None else "starting from step 0"
    for _, path, why in sorted(bad, reverse=True):
      logging.warning("Checkpoint %s is %s; moved it aside to %s (kept, delete it when not "
                      "needed); %s", path, why, move_aside(path), resume)
    if bad:
      self.latest.reload()
      self.best.reload()
    return restored if restored is not None else (None, {})

  def restore_best(self, target_state):
    """(state, record) of the best checkpoint on validation, or (None, {}) when there is none."""
    step = self.best_step()
    if step is None:
      return None, {}
    return self._restore(self.best, step, target_state)

  def step_dir(self, step: int) -> str:
    """The directory of the latest-checkpoint `step`."""
    return os.path.join(self.latest_dir, str(step))

  def wait(self):
    """Waits for the saves in flight; CheckpointSaveError if one failed."""
    self._wait(self.latest)
    self._wait(self.best)

  def close(self):
    self.latest.close()
    self.best.close()
