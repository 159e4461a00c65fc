"""Fault tests of training, evaluation and export (experiments/trainer.py, checkpointing.py,
restore.py): signals at random steps, damaged checkpoints, failing saves, two processes on one work
directory, a non-finite loss.

Every run is `python -m experiments.train` (or evaluate) in a subprocess on a tiny synthetic
problem (16 steps of bin_small_cnn, a checkpoint every 4). The subprocesses share a persistent JAX
compilation cache, so only the first one compiles. `LAUNCHER` runs the program's main after
installing the fault a test asks for through FAULT_* environment variables (a slower input
pipeline, so that a signal lands mid-run; a failing file system from a given step); without them
it is exactly `python -m experiments.train`.
"""

import fcntl
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments import checkpointing
from experiments import metrics as metrics_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOTAL_STEPS = 16
CHECKPOINT_EVERY = 4
TIMEOUT = 600  # seconds per subprocess (a warm run: 15 s alone, 60-150 s at load 20 on 2 cores)

TINY_RUN = [
    "--model=bin_small_cnn", "--config.data.source=synthetic",
    "--config.data.synthetic_train_size=320", "--config.data.synthetic_test_size=64",
    "--config.data.num_validation=64", "--config.batch_size=32", "--config.eval_batch_size=64",
    "--config.model.options.width=0.25", f"--config.num_train_steps={TOTAL_STEPS}",
    f"--config.checkpoint_every_steps={CHECKPOINT_EVERY}", "--config.eval_every_steps=8",
    "--config.log_every_steps=1", "--config.optim.name=adam", "--config.optim.learning_rate=0.01",
    "--config.tensorboard=False", "--config.eval_test_during_training=False",
    "--config.data.prefetch=1"]

LAUNCHER = r"""
import errno, os, resource, runpy, signal, sys, time
from experiments import input_pipeline, trainer

delay = float(os.environ.get("FAULT_STEP_DELAY", "0"))
fault = os.environ.get("FAULT_KIND", "")
at_step = int(os.environ.get("FAULT_AT_STEP", "-1"))
after = os.environ.get("FAULT_AFTER_PATH", "")
real_batches = input_pipeline.train_batches

def install_fault():
  while after and not os.path.isdir(after):  # e.g. until the previous checkpoint is committed
    time.sleep(0.05)
  if fault == "disk_full":  # files may not grow past 16 KiB: writes fail with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (16384, resource.RLIM_INFINITY))
  elif fault == "read_only":
    # chmod cannot make a directory read-only for root (it ignores permission bits) and a
    # read-only mount needs privileges: fail directory creation in the checkpoint directories,
    # as a read-only file system does (orbax creates each save's temporary directory first).
    real_mkdir, root = os.mkdir, os.environ["FAULT_ROOT"]
    def mkdir(path, *args, **kwargs):
      if os.fspath(path).startswith(root):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
      return real_mkdir(path, *args, **kwargs)
    os.mkdir = mkdir

def train_batches(*args):
  for item in real_batches(*args):
    if item[0] == at_step:
      install_fault()
    time.sleep(delay)
    yield item

input_pipeline.train_batches = train_batches
if fault == "disk_full":  # install_fault runs in the input pipeline's thread: no signal() there
  signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
if fault == "inf_loss":
  real_cross_entropy = trainer.cross_entropy
  trainer.cross_entropy = lambda *a, **k: real_cross_entropy(*a, **k) * float("inf")
runpy.run_module("experiments.train", run_name="__main__", alter_sys=True)
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  cache = tmp_path_factory.mktemp("jax_cache")
  return dict(os.environ, JAX_PLATFORMS="cpu", XNORJAX_HUGE_PAGES="0",
              JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")


def train_command(workdir, *extra):
  return [sys.executable, "-c", LAUNCHER, f"--workdir={workdir}", *TINY_RUN, *extra]


def start(env, workdir, *extra, **faults):
  """Starts a training subprocess; faults: FAULT_<NAME>=value environment variables."""
  fault_env = dict(env, **{f"FAULT_{k.upper()}": str(v) for k, v in faults.items()})
  return subprocess.Popen(train_command(workdir, *extra), cwd=REPO, env=fault_env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc, timeout=TIMEOUT):
  try:
    out, err = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    out, err = proc.communicate()
    pytest.fail(f"timed out after {timeout} s: {err[-3000:]}")
  return proc.returncode, out, err


def train(env, workdir, *extra, **faults):
  return finish(start(env, workdir, *extra, **faults))


def error_lines(stderr):
  return [line for line in stderr.splitlines() if line.startswith("error:")]


def logged_steps(workdir):
  path = os.path.join(workdir, metrics_lib.METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    lines = f.read().splitlines()
  return [json.loads(line)["step"] for line in lines if line.endswith("}") and "train_loss" in line]


def wait_until(proc, done, what, timeout=TIMEOUT):
  """done()'s first value other than None, polled while `proc` runs; fails the test when `proc`
  ends or `timeout` passes first (`what`: the awaited event, for the message)."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    value = done()
    if value is not None:
      return value
    if proc.poll() is not None:
      pytest.fail(f"the run ended before {what}: {proc.communicate()[1][-3000:]}")
    time.sleep(0.02)
  proc.kill()
  pytest.fail(f"{what}: not within {timeout} s")


def wait_for_step(proc, workdir, step, timeout=TIMEOUT):
  """The newest logged training step once it is >= `step` (the run goes on meanwhile)."""
  def reached():
    steps = logged_steps(workdir)
    return steps[-1] if steps and steps[-1] >= step else None
  return wait_until(proc, reached, f"step {step}", timeout)


def holds_flock(pid, path) -> bool:
  """Whether process `pid` holds a flock on `path`, read from /proc/locks (taking the lock to probe
  it could make that process's own attempt fail)."""
  if not os.path.exists(path):
    return False
  inode = os.stat(path).st_ino
  with open("/proc/locks") as f:
    for line in f:
      fields = line.split()  # "1: FLOCK ADVISORY WRITE <pid> <major>:<minor>:<inode> 0 EOF"
      if len(fields) > 5 and fields[1] == "FLOCK" and fields[4] == str(pid) and \
          fields[5].rsplit(":", 1)[-1] == str(inode):
        return True
  return False


def wait_for_lock(proc, path, timeout=TIMEOUT):
  """Returns once `proc` holds the flock on `path` (the run goes on meanwhile)."""
  wait_until(proc, lambda: holds_flock(proc.pid, path) or None, f"it locked {path}", timeout)


def saved_arrays(step_dir):
  """{path: array} of the parameters and BatchNorm statistics stored in a checkpoint directory."""
  tree = ocp.PyTreeCheckpointer().restore(os.path.join(step_dir, "state"))
  flat = {}
  for key in ("params", "rest"):
    for path, leaf in _flatten(tree[key], key):
      flat[path] = np.asarray(leaf)
  return flat


def _flatten(tree, prefix):
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from _flatten(v, f"{prefix}.{k}")
  else:
    yield prefix, tree


def assert_same_arrays(got, want):
  assert sorted(got) == sorted(want)
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def finished_steps(workdir):
  return checkpointing.scan(os.path.join(workdir, checkpointing.LATEST_DIR))[0]


def tree_listing(path):
  """{relative file path: bytes} of everything under `path` (to check nothing was changed)."""
  files = {}
  for f in sorted(glob.glob(os.path.join(path, "**"), recursive=True)):
    if os.path.isfile(f):
      with open(f, "rb") as fh:
        files[os.path.relpath(f, path)] = fh.read()
  return files


@pytest.fixture(scope="module")
def baseline(env, tmp_path_factory):
  """An uninterrupted run: (workdir, {path: array} of its final checkpoint)."""
  workdir = str(tmp_path_factory.mktemp("baseline") / "run")
  rc, out, err = train(env, workdir)
  assert rc == 0, err[-3000:]
  assert f"last step {TOTAL_STEPS}" in out
  assert finished_steps(workdir) == [16, 12]
  return workdir, saved_arrays(os.path.join(workdir, checkpointing.LATEST_DIR, str(TOTAL_STEPS)))


# ---- 1. Signals at random steps, then the same command again ------------------------------------

def _signal_cases() -> list:
  """3 seeds per signal; SIGINT (the same handler as SIGTERM) and the further seeds are slow."""
  return [pytest.param(name, seed, id=f"{name}-{seed}",
                       marks=() if seed == 0 and name != "SIGINT" else (pytest.mark.slow,))
          for name in ("SIGTERM", "SIGINT", "SIGKILL") for seed in range(3)]


@pytest.mark.parametrize("signal_name, seed", _signal_cases())
def test_signal_at_a_random_step_then_the_same_command_finishes_the_run(
    env, baseline, tmp_path, signal_name, seed):
  """SIGTERM / SIGINT: a checkpoint at the step reached; SIGKILL: the run resumes from the newest
  committed periodic checkpoint. Either way the rerun ends with the uninterrupted run's exact
  parameters (resuming is exact: same batches, same state)."""
  signum = getattr(signal, signal_name)
  target = int(np.random.default_rng([seed, signum]).integers(2, TOTAL_STEPS - 3))
  workdir = str(tmp_path / "run")
  proc = start(env, workdir, step_delay=0.25)
  reached = wait_for_step(proc, workdir, target)
  os.kill(proc.pid, signum)
  rc, out, err = finish(proc)
  committed = finished_steps(workdir)
  if signum == signal.SIGKILL:
    assert rc == -signal.SIGKILL
    expected_resume = committed[0] if committed else 0
    # At most the steps since the last periodic checkpoint are lost, plus one interval when
    # the kill interrupted the save of the newest one.
    assert reached - expected_resume < 2 * CHECKPOINT_EVERY, (reached, committed)
  else:
    assert rc == 0, err[-3000:]
    stopped = int(out.split(f"Interrupted by {signal_name} after step ")[1].split(";")[0])
    assert reached <= stopped < TOTAL_STEPS
    assert committed[0] == stopped
    expected_resume = stopped
  rc, out, err = train(env, workdir)
  assert rc == 0, err[-3000:]
  if expected_resume:
    assert f"at step {expected_resume} (epoch" in err  # "Resumed from <dir> at step N (epoch ..)"
  else:
    assert "Resumed from" not in err
  assert f"last step {TOTAL_STEPS}" in out
  assert_same_arrays(saved_arrays(os.path.join(workdir, checkpointing.LATEST_DIR, "16")),
                     baseline[1])


# ---- 2. Unfinished or damaged newest checkpoint ---------------------------------------------------

def _truncate(step_dir):
  for f in glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True):
    os.truncate(f, os.path.getsize(f) // 2)


def _garbage(step_dir):
  rng = np.random.default_rng(0)
  for f in glob.glob(os.path.join(step_dir, "**"), recursive=True):
    if os.path.isfile(f):
      with open(f, "wb") as fh:
        fh.write(rng.integers(0, 256, max(os.path.getsize(f), 16), dtype=np.uint8).tobytes())


def _no_commit_marker(step_dir):
  os.remove(os.path.join(step_dir, checkpointing.COMMIT_MARKER))


def _orbax_temporary(step_dir):
  """As a save cut short: orbax's temporary directory of the step, not renamed to the step."""
  os.rename(step_dir, step_dir + checkpointing.TMP_MARKER)


DAMAGES = {"truncated": _truncate, "garbage": _garbage, "no_commit_marker": _no_commit_marker,
           "orbax_tmp_dir": _orbax_temporary}


def _damaged_copy(baseline, tmp_path, damage):
  """A copy of the baseline run whose newest checkpoints (latest 16 and best) are damaged;
  returns (workdir, [damaged directories])."""
  workdir = str(tmp_path / "run")
  shutil.copytree(baseline[0], workdir)
  damaged = [os.path.join(workdir, checkpointing.LATEST_DIR, "16")]
  damaged += glob.glob(os.path.join(workdir, checkpointing.BEST_DIR, "[0-9]*"))
  for d in damaged:
    DAMAGES[damage](d)
  if damage == "orbax_tmp_dir":
    damaged = [d + checkpointing.TMP_MARKER for d in damaged]
  return workdir, damaged


@pytest.mark.parametrize("damage", [
    "truncated", *(pytest.param(d, marks=pytest.mark.slow) for d in DAMAGES if d != "truncated")])
def test_evaluate_and_export_fall_back_to_the_newest_good_checkpoint(env, baseline, tmp_path,
                                                                     damage):
  workdir, damaged = _damaged_copy(baseline, tmp_path, damage)
  before = {d: tree_listing(d) for d in damaged}
  bad_latest = damaged[0]
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.evaluate", f"--workdir={workdir}",
       f"--output_dir={tmp_path / 'eval'}"], cwd=REPO, env=env, capture_output=True, text=True,
      timeout=TIMEOUT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  warnings = [line for line in proc.stderr.splitlines() if bad_latest in line]
  assert len(warnings) == 1 and ("unreadable" in warnings[0] or "unfinished" in warnings[0]), (
      proc.stderr[-3000:])
  assert "using step 12 instead" in warnings[0]
  assert "checkpoint: latest (step 12)" in proc.stdout
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.export", f"--workdir={workdir}",
       f"--out={tmp_path / 'exported'}", "--verify_images=0"], cwd=REPO, env=env,
      capture_output=True, text=True, timeout=TIMEOUT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "latest checkpoint, step 12" in proc.stdout
  assert len([line for line in proc.stderr.splitlines() if bad_latest in line]) == 1
  for d in damaged:  # Read-only consumers leave everything as it was.
    assert tree_listing(d) == before[d]


@pytest.mark.parametrize("damage", [
    "orbax_tmp_dir", *(pytest.param(d, marks=pytest.mark.slow) for d in DAMAGES
                       if d != "orbax_tmp_dir")])
def test_resume_falls_back_to_the_newest_good_checkpoint_and_keeps_the_bad_one(
    env, baseline, tmp_path, damage):
  workdir, damaged = _damaged_copy(baseline, tmp_path, damage)
  bad_latest = damaged[0]
  before = tree_listing(bad_latest)
  rc, out, err = train(env, workdir)
  assert rc == 0, err[-3000:]
  moved = [line for line in err.splitlines() if bad_latest in line and "moved it aside" in line]
  assert len(moved) == 1 and "resuming from step 12" in moved[0], err[-3000:]
  assert "at step 12 (epoch" in err
  # The bad directory is kept, renamed so that orbax neither deletes nor re-lists it.
  assert tree_listing(bad_latest + checkpointing.UNREADABLE_SUFFIX) == before
  assert_same_arrays(saved_arrays(os.path.join(workdir, checkpointing.LATEST_DIR, "16")),
                     baseline[1])


def test_no_good_checkpoint_stops_with_one_line_naming_the_directories(env, baseline, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(baseline[0], workdir)
  damaged = [os.path.join(workdir, checkpointing.LATEST_DIR, s) for s in ("12", "16")]
  damaged += glob.glob(os.path.join(workdir, checkpointing.BEST_DIR, "[0-9]*"))
  for d in damaged:
    _truncate(d)
  before = {d: tree_listing(d) for d in damaged}
  proc = subprocess.run([sys.executable, "-m", "experiments.evaluate", f"--workdir={workdir}"],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT)
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert len(error_lines(proc.stderr)) == 1, proc.stderr[-3000:]
  (line,) = error_lines(proc.stderr)
  assert line.startswith("error: UnreadableCheckpointError: no readable checkpoint in ")
  assert all(d in line for d in damaged[:2]) and "Nothing was deleted" in line
  rc, _, err = train(env, workdir)
  assert rc == 1, err[-3000:]
  assert len(error_lines(err)) == 1, err[-3000:]
  (line,) = error_lines(err)
  assert "UnreadableCheckpointError" in line and all(d in line for d in damaged[:2])
  for d in damaged:
    assert tree_listing(d) == before[d]


# ---- 3. A save that cannot be written -------------------------------------------------------------

@pytest.mark.parametrize("fault, reason", [("disk_full", "File too large"),
                                           ("read_only", "Read-only file system")])
def test_failing_save_is_one_clear_line_and_the_previous_checkpoint_stays_restorable(
    env, tmp_path, fault, reason):
  workdir = str(tmp_path / "run")
  latest = os.path.join(workdir, checkpointing.LATEST_DIR)
  # From step 7 on (once checkpoint 4 is committed), the step-8 save fails.
  rc, _, err = train(env, workdir, kind=fault, at_step=6,
                     after_path=os.path.join(latest, "4"), root=workdir + os.sep)
  assert rc == 1, err[-3000:]
  (line,) = error_lines(err)
  assert line.startswith("error: CheckpointSaveError: could not save checkpoint ")
  assert reason in line and f"the latest checkpoint {latest}{os.sep}4 is intact" in line, line
  # The command exits after that line; it does not wait out orbax's signal timeout (5 minutes)
  # in the failed save's threads, which would log this when it expires.
  assert "Timeout waiting for key" not in err
  assert finished_steps(workdir) == [4]
  arrays = saved_arrays(os.path.join(latest, "4"))
  assert arrays and all(np.all(np.isfinite(a)) for a in arrays.values()
                        if np.issubdtype(a.dtype, np.floating))


# ---- 4. Two processes on one work directory --------------------------------------------------------

def test_second_process_on_a_workdir_refuses_and_the_lock_dies_with_the_first(env, tmp_path):
  workdir = str(tmp_path / "run")
  # Ten minutes per step: the first still holds the lock when the second one, which needs a minute
  # to start on a loaded machine, gets there (it is killed once the check is done).
  first = start(env, workdir, step_delay=600)
  try:
    wait_for_lock(first, os.path.join(workdir, checkpointing.LOCK_FILE))
    rc, out, err = train(env, workdir)
    assert rc == 1
    (line,) = error_lines(err)
    assert line.startswith(f"error: WorkdirBusyError: workdir {workdir} is in use by another "
                           f"training process (pid {first.pid} on ")
    assert first.poll() is None  # The first one trains on.
  finally:
    first.kill()
    first.communicate()
  lock = os.path.join(workdir, checkpointing.LOCK_FILE)
  with open(lock) as f:  # The file stays, the lock does not: the kernel dropped it with the process.
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)


# ---- 5. A non-finite loss -----------------------------------------------------------------------------

def test_infinite_loss_stops_naming_the_step_and_the_last_good_checkpoint(env, baseline, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(baseline[0], workdir)
  rc, _, err = train(env, workdir, "--config.num_train_steps=24", "--allow_config_change",
                     kind="inf_loss")
  assert rc == 1
  good = os.path.join(workdir, checkpointing.LATEST_DIR, "16")
  (line,) = error_lines(err)
  assert line.startswith("error: NonFiniteLossError: training loss is inf at step 17 ")
  assert f"the last good checkpoint is step 16 in {good}" in line
  assert finished_steps(workdir) == [16, 12]  # nothing saved from the bad steps
  assert_same_arrays(saved_arrays(good), baseline[1])


# ---- The guards alone, in process (fast) ---------------------------------------------------------

TINY_STATE = {"params": {"w": np.arange(4000, dtype=np.float32)}, "rest": {"n": np.ones(3, np.float32)},
              "opt_state": {"m": np.zeros(4000, np.float32)}}


def _tiny_checkpoints(workdir, steps=(4, 8)):
  import jax  # pylint: disable=g-import-not-at-top
  ckpts = checkpointing.Checkpoints(str(workdir), keep=3)
  for s in steps:
    ckpts.save(s, jax.tree.map(lambda x, s=s: x + s, TINY_STATE), {"step": s})
  ckpts.wait()
  return ckpts


def test_workdir_lock_refuses_a_second_holder_until_released(tmp_path):
  with checkpointing.workdir_lock(str(tmp_path)):
    # flock belongs to the open file: a second open in the same process conflicts as well.
    with pytest.raises(checkpointing.WorkdirBusyError, match=rf"pid {os.getpid()} on .* holds "):
      with checkpointing.workdir_lock(str(tmp_path)):
        pass
  with checkpointing.workdir_lock(str(tmp_path)):  # released on exit
    pass
  with checkpointing.workdir_lock(str(tmp_path), enabled=False):
    pass


def test_scan_tells_finished_from_unfinished_checkpoints(tmp_path):
  for name, marker in (("4", True), ("8", True), ("12", False), ("16.orbax-checkpoint-tmp-5", True),
                       ("20.orbax-checkpoint-tmp", False), ("8.unreadable", True), ("notes", True)):
    os.makedirs(tmp_path / name)
    if marker:
      (tmp_path / name / checkpointing.COMMIT_MARKER).write_text("ok")
  finished, unfinished = checkpointing.scan(str(tmp_path))
  assert finished == [8, 4]
  assert unfinished == [(20, str(tmp_path / "20.orbax-checkpoint-tmp")),
                        (16, str(tmp_path / "16.orbax-checkpoint-tmp-5")), (12, str(tmp_path / "12"))]


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_restore_latest_falls_back_and_moves_the_bad_checkpoint_aside(tmp_path, damage):
  _tiny_checkpoints(tmp_path).close()
  bad = str(tmp_path / checkpointing.LATEST_DIR / "8")
  DAMAGES[damage](bad)
  if damage == "orbax_tmp_dir":
    bad += checkpointing.TMP_MARKER
  before = tree_listing(bad)
  ckpts = checkpointing.Checkpoints(str(tmp_path), keep=3)
  state, record = ckpts.restore_latest(TINY_STATE)
  assert record["step"] == 4 and ckpts.latest_step() == 4
  np.testing.assert_array_equal(np.asarray(state["params"]["w"]), TINY_STATE["params"]["w"] + 4)
  assert not os.path.exists(bad)
  assert tree_listing(bad + checkpointing.UNREADABLE_SUFFIX) == before
  ckpts.close()


def test_restore_latest_with_no_readable_checkpoint_names_them_and_moves_nothing(tmp_path):
  _tiny_checkpoints(tmp_path).close()
  latest = str(tmp_path / checkpointing.LATEST_DIR)
  for s in ("4", "8"):
    _truncate(os.path.join(latest, s))
  ckpts = checkpointing.Checkpoints(str(tmp_path), keep=3)
  with pytest.raises(checkpointing.UnreadableCheckpointError,
                     match=rf"no readable checkpoint in {latest}: {latest}/8 \(.*\); {latest}/4 "):
    ckpts.restore_latest(TINY_STATE)
  assert sorted(os.listdir(latest)) == ["4", "8"]
  ckpts.close()


def test_save_that_cannot_be_written_names_the_step_and_the_intact_checkpoint(tmp_path,
                                                                             monkeypatch):
  ckpts = _tiny_checkpoints(tmp_path)
  root, real_mkdir = str(tmp_path), os.mkdir

  def read_only_mkdir(path, *args, **kwargs):  # root ignores chmod: fail as a read-only mount
    if os.fspath(path).startswith(root):
      raise OSError(30, os.strerror(30), os.fspath(path))
    return real_mkdir(path, *args, **kwargs)

  monkeypatch.setattr(os, "mkdir", read_only_mkdir)
  latest = str(tmp_path / checkpointing.LATEST_DIR)
  with pytest.raises(checkpointing.CheckpointSaveError,
                     match=rf"could not save checkpoint {latest}/12 \(.*Read-only file system.*\); "
                     rf"the latest checkpoint {latest}/8 is intact"):
    ckpts.save(12, TINY_STATE, {"step": 12})
    ckpts.wait()
  started = time.monotonic()
  ckpts.wait()  # After the failure: returns at once instead of waiting for orbax's threads.
  assert time.monotonic() - started < 5
  monkeypatch.setattr(os, "mkdir", real_mkdir)
  assert checkpointing.scan(latest)[0] == [8, 4]
  state, record = ckpts.restore_latest(TINY_STATE)
  assert record["step"] == 8


def test_unreadable_best_metrics_are_moved_aside_when_training_opens_its_checkpoints(tmp_path):
  import jax  # pylint: disable=g-import-not-at-top
  ckpts = _tiny_checkpoints(tmp_path)
  ckpts.save_best(8, jax.tree.map(lambda x: x + 8, TINY_STATE), {"step": 8}, 0.5)
  ckpts.close()
  bad = str(tmp_path / checkpointing.BEST_DIR / "8")
  _garbage(bad)
  ckpts = checkpointing.Checkpoints(str(tmp_path), keep=3)
  assert ckpts.best_step() is None and ckpts.best_steps() == []
  assert os.path.isdir(bad + checkpointing.UNREADABLE_SUFFIX)
  ckpts.close()
