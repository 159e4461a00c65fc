"""Shared command-line plumbing of the experiments programs: which errors are the user's, how they
are reported, and which library log lines are kept out of the output.

Import this module before anything that imports TensorFlow: it sets TensorFlow's C++ log level
default (INFO lines such as the oneDNN banner are dropped; warnings and errors stay) when the user
has not set it.
"""

from __future__ import annotations

import functools
import logging as pylogging
import os
import re
import sys
import tarfile
from typing import Callable

# TensorFlow (tfds source) prints INFO banners ("oneDNN custom operations are on ...") on import;
# level 1 drops INFO only. On CPUs where TensorFlow turns its oneDNN optimisations on (Intel Xeons
# with AVX-512) that banner comes before its logging starts and ignores the level: those
# optimisations are off unless asked for (TensorFlow only decodes and batches the data here, and
# they change nothing the project computes). A user's own settings win.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

# Errors that come from the user's configuration, data or files: printed as one clear line, no
# traceback (the traceback is logged at DEBUG, shown with --verbosity=1 for absl programs).
USER_ERRORS = (ValueError, TypeError, KeyError, OSError, ImportError, FloatingPointError,
               RuntimeError, tarfile.TarError)

# JAX's probe of backends that are not there (a TPU plugin without a TPU): harmless on every
# machine without that hardware, and printed on every command.
_PROBE_MESSAGES = ("Unable to initialize backend 'tpu'", "Platform 'tpu' is experimental")
# orbax's own error for a checkpoint whose metadata cannot be read: experiments/checkpointing.py
# and restore.py report such a checkpoint in one line naming it (and fall back past it).
_ORBAX_UNREADABLE = "Failed to read Metadata file"
# asyncio's report of a future or task whose exception nobody retrieved, when that exception is a
# tensorstore read error ("OUT_OF_RANGE: Error opening ..."): the sibling reads of a checkpoint
# restore that failed on its first unreadable array, which the project already reported.
_UNRETRIEVED = ("Future exception was never retrieved", "Task exception was never retrieved")
_TENSORSTORE_ERROR = re.compile(r"^[A-Z][A-Z_]+: ")
_OWN_PACKAGES = ("experiments", "xnorjax")  # whose INFO records pass (the model summary, progress)


def error_line(error: BaseException) -> str:
  """The one line a user sees for `error`: its type and message, newlines folded."""
  message = " ".join(str(error).split()) if not isinstance(error, KeyError) else repr(error.args[0])
  return f"error: {type(error).__name__}: {message}"


class QuietLibraries(pylogging.Filter):
  """Passes warnings and errors, and INFO records from experiments/ only (not orbax's per-save
  chatter nor JAX's backend messages); drops JAX's probe messages for absent TPU backends and
  orbax's error for an unreadable checkpoint (reported once by the project, naming it) and the
  unretrieved errors of that restore's other reads (`is_abandoned_checkpoint_read`)."""

  def __init__(self, own_info_only: bool = True):
    super().__init__()
    self.own_info_only = own_info_only

  def filter(self, record):
    if record.name.startswith("jax") and record.getMessage().startswith(_PROBE_MESSAGES):
      return False
    if "orbax" in record.pathname and record.getMessage().startswith(_ORBAX_UNREADABLE):
      return False
    if is_abandoned_checkpoint_read(record):
      return False
    if record.levelno >= pylogging.WARNING or not self.own_info_only:
      return True
    return any(f"{os.sep}{package}{os.sep}" in record.pathname for package in _OWN_PACKAGES)


def is_abandoned_checkpoint_read(record: pylogging.LogRecord) -> bool:
  """Whether `record` is asyncio's report of an unretrieved tensorstore read error.

  A restore gathers one read per array; when one fails, orbax raises that error and the reads
  still in flight fail the same way with nobody awaiting them, each reported by asyncio when its
  future or task is collected: many lines naming the damaged checkpoint after the project's one.
  """
  if record.name != "asyncio" or not record.getMessage().startswith(_UNRETRIEVED):
    return False
  error = record.exc_info[1] if record.exc_info else None
  return isinstance(error, ValueError) and bool(_TENSORSTORE_ERROR.match(str(error)))


def is_stale_event_loop_callback(unraisable) -> bool:
  """Whether an unraisable exception is a callback into an event loop that is already closed.

  When one array of a checkpoint cannot be read, orbax's restore fails and closes its event loop
  while tensorstore still completes the reads of the other arrays; each completion's callback then
  raises "Event loop is closed" in a tensorstore thread, reported through sys.unraisablehook: one
  traceback per array, interleaved with the one line that names the damaged checkpoint.
  """
  error = unraisable.exc_value
  return isinstance(error, RuntimeError) and str(error) == "Event loop is closed"


def drop_stale_event_loop_callbacks():
  """Installs a sys.unraisablehook that drops `is_stale_event_loop_callback` reports and passes
  every other one to the hook it replaces."""
  previous = sys.unraisablehook
  if getattr(previous, "drops_stale_event_loop_callbacks", False):
    return

  def hook(unraisable):
    if not is_stale_event_loop_callback(unraisable):
      previous(unraisable)

  hook.drops_stale_event_loop_callbacks = True
  sys.unraisablehook = hook


def quiet_libraries():
  """Installs `QuietLibraries` on the absl and root handlers: library INFO chatter is dropped unless
  --verbosity is given (the probe messages always are). Also drops the stale event-loop callbacks
  of an abandoned checkpoint restore (`drop_stale_event_loop_callbacks`)."""
  drop_stale_event_loop_callbacks()
  from absl import flags  # pylint: disable=g-import-not-at-top
  from absl import logging  # pylint: disable=g-import-not-at-top
  verbose = "verbosity" in flags.FLAGS and flags.FLAGS["verbosity"].present
  quiet = QuietLibraries(own_info_only=not verbose)
  handlers = [logging.get_absl_handler(), *pylogging.getLogger().handlers]
  for handler in handlers:
    if not any(isinstance(f, QuietLibraries) for f in handler.filters):
      handler.addFilter(quiet)
  # Records logged before absl's handler exists (the backend probe can run at import) go through
  # logging.lastResort, which has no filters: filter the probe at its logger too.
  jax_logger = pylogging.getLogger("jax._src.xla_bridge")
  if not any(isinstance(f, QuietLibraries) for f in jax_logger.filters):
    jax_logger.addFilter(QuietLibraries(own_info_only=False))


def report_user_errors(main: Callable) -> Callable:
  """Wraps a program's main: a USER_ERRORS exception becomes one line on stderr (`error_line`) and
  exit status 1, with the library log filters installed first."""

  @functools.wraps(main)
  def wrapped(*args, **kwargs):
    quiet_libraries()
    try:
      return main(*args, **kwargs)
    except USER_ERRORS as e:
      from absl import logging  # pylint: disable=g-import-not-at-top
      logging.debug("Traceback:", exc_info=True)
      print(error_line(e), file=sys.stderr)
      if getattr(e, "abandons_threads", False):
        exit_now(1)
      sys.exit(1)

  return wrapped


def exit_now(status: int):
  """Exits with `status` once the output is flushed, without joining the remaining threads: after an
  error marked `abandons_threads` (a checkpoint save that failed), library threads wait for
  signals that will never come, up to orbax's 5-minute timeout, before a normal exit could end."""
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.flush()
  for handler in pylogging.getLogger().handlers:
    handler.flush()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(status)  # pylint: disable=protected-access


def run_main(main: Callable, *, absl_flags: bool = True):
  """Runs a program's main: through absl's `app.run` (absl_flags) or directly (argparse programs),
  with user errors reported as one line (`report_user_errors`)."""
  if absl_flags:
    from absl import app  # pylint: disable=g-import-not-at-top
    app.run(report_user_errors(main))
  else:
    report_user_errors(main)()
