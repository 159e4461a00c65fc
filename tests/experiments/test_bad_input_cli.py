"""Bad input on the command lines (train, evaluate, export, report, the benchmarks): one line on
stderr naming the setting, a non-zero exit status, no traceback, no hang.

A few programs run as subprocesses (all started at once, each with a timeout); the many cases
behind them are checked in-process on the functions the mains call (`experiments.cli`, the
config and data checks, the image-folder reader), where a process per case would be too slow.
"""

import asyncio
import gc
import io
import logging
import os
import subprocess
import sys
import tarfile
import time
import types

from absl import flags
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from ml_collections import config_flags
import numpy as np
from PIL import Image
import pytest

from helpers.configs import set_fields
from experiments import cli
from experiments import configs
from experiments import evaluate
from experiments import export
from experiments import image_folder
from experiments import input_pipeline
from experiments import report
from experiments import train
from experiments import trainer
from experiments.configs import default

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMEOUT_S = 420  # all programs together, on a loaded 2-core machine
# Start-up lines a user should not see on every command (JAX's TPU probe, TensorFlow's banners).
NOISE = ("Unable to initialize backend 'tpu'", "Platform 'tpu' is experimental",
         "TF_ENABLE_ONEDNN_OPTS", "oneDNN custom operations", "Traceback")


# ------------------------------------------------------------------------------------------------
# Subprocesses: the programs themselves.
# ------------------------------------------------------------------------------------------------

def _program_cases(tmp):
  """{case: (program, arguments, words the one error line names)}: one case per kind of main (absl
  flag parsing, a check in the main, a library error, an argparse program); the other cases of
  each kind are checked in-process below."""
  a_file = os.path.join(tmp, "a_file")
  return {
      "train: wrong type": ("train", ["--workdir=" + os.path.join(tmp, "w1"),
                                      "--config.batch_size=abc"], "--config.batch_size=abc"),
      "train: unknown field": ("train", ["--workdir=" + os.path.join(tmp, "w2"),
                                         "--config.batch_sise=3"], "batch_sise"),
      "train: work directory is a file": ("train", ["--workdir=" + a_file,
                                                    "--config.data.source=synthetic"],
                                          "--workdir="),
      "evaluate: work directory is a file": ("evaluate", ["--workdir=" + a_file],
                                             "is not a directory"),
      "bench.kernels: batches not ints": ("bench.kernels", ["--batches=1,x"], "'x'"),
  }


# TensorFlow (the tfds source, TensorBoard) imported after experiments.cli: no INFO banners.
TENSORFLOW_IMPORT = "from experiments import cli; import tensorflow; print('imported')"
TENSORFLOW_NOISE = ("cpu_feature_guard", "oneDNN custom operations", "TF_ENABLE_ONEDNN_OPTS")


@pytest.fixture(scope="module")
def program_runs(tmp_path_factory):
  """{case: CompletedProcess-like (returncode, stdout, stderr)}: every case's program, started
  together (imports dominate each run's time; they overlap)."""
  tmp = str(tmp_path_factory.mktemp("bad_cli"))
  with open(os.path.join(tmp, "a_file"), "w") as f:
    f.write("not a directory")
  cases = _program_cases(tmp)
  env = {k: v for k, v in os.environ.items()
         if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS")}  # as a user's shell has
  procs = {name: subprocess.Popen([sys.executable, "-m", f"experiments.{program}", *args],
                                  cwd=_ROOT, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
           for name, (program, args, _) in cases.items()}
  procs["tensorflow"] = subprocess.Popen([sys.executable, "-c", TENSORFLOW_IMPORT], cwd=_ROOT,
                                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         text=True)
  results = {}
  deadline = time.monotonic() + TIMEOUT_S
  for name, proc in procs.items():
    try:
      out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      proc.kill()
      out, err = proc.communicate()
      out, err = out, err + "\nHUNG: killed after the timeout"
    results[name] = (proc.returncode, out, err)
  return cases, results


@pytest.mark.parametrize("case", list(_program_cases("/tmp")))
def test_program_reports_bad_input_in_one_line(program_runs, case):
  cases, results = program_runs
  returncode, out, err = results[case]
  words = cases[case][2]
  assert "HUNG" not in err, err[-2000:]
  assert returncode not in (0, None), (out[-1000:], err[-2000:])
  for noise in NOISE:
    assert noise not in err and noise not in out, err[-3000:]
  lines = [line for line in err.splitlines() if line.strip()]
  errors = [line for line in lines if words in line]
  assert errors and errors[0].lower().startswith(("error", "fatal", "usage")), err[-2000:]


def test_tensorflow_prints_no_info_banners_after_cli(program_runs):
  _, results = program_runs
  returncode, out, err = results["tensorflow"]
  assert returncode == 0 and out.strip() == "imported", err[-2000:]
  for noise in TENSORFLOW_NOISE:
    assert noise not in err, err[-2000:]


# ------------------------------------------------------------------------------------------------
# In-process: the plumbing of experiments.cli.
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("error", [ValueError("config.x=3 must be >= 4"),
                                   FileNotFoundError("no such folder\n(config.data.path)"),
                                   TypeError("wrong type"), KeyError("model"),
                                   tarfile.ReadError("not a gzip file")])
def test_a_user_error_becomes_one_line_and_exit_status_1(error, capsys):
  def main():
    raise error

  with pytest.raises(SystemExit) as exited:
    cli.report_user_errors(main)()
  assert exited.value.code == 1
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith(f"error: {type(error).__name__}: "), err
  assert "Traceback" not in err


def test_a_programming_error_is_not_hidden():
  def main():
    raise AssertionError("a bug")

  with pytest.raises(AssertionError, match="a bug"):
    cli.report_user_errors(main)()


def test_stale_event_loop_callbacks_are_dropped_and_other_unraisables_pass(monkeypatch):
  seen = []
  monkeypatch.setattr(sys, "unraisablehook", seen.append)
  cli.drop_stale_event_loop_callbacks()
  cli.drop_stale_event_loop_callbacks()  # Installed once, not stacked.
  stale = RuntimeError("Event loop is closed")
  other = RuntimeError("Event loop is closed, and something else")
  not_runtime = ValueError("Event loop is closed")
  for error in (stale, other, not_runtime):
    sys.unraisablehook(types.SimpleNamespace(exc_type=type(error), exc_value=error,
                                             exc_traceback=None, err_msg=None, object=None))
  assert [u.exc_value for u in seen] == [other, not_runtime]


def _record(name, level, message, pathname="/site-packages/jax/_src/xla_bridge.py"):
  return logging.LogRecord(name, level, pathname, 1, message, None, None)


def test_quiet_libraries_drops_the_tpu_probe_and_library_info_only():
  quiet = cli.QuietLibraries()
  assert not quiet.filter(_record("jax._src.xla_bridge", logging.INFO,
                                  "Unable to initialize backend 'tpu': INTERNAL: no TPU"))
  assert not quiet.filter(_record("jax._src.xla_bridge", logging.WARNING,
                                  "Platform 'tpu' is experimental and not all JAX functionality"))
  assert not quiet.filter(_record("absl", logging.INFO, "Saving checkpoint",
                                  "/site-packages/orbax/checkpoint/x.py"))
  assert quiet.filter(_record("jax._src.xla_bridge", logging.WARNING, "An NVIDIA GPU may be "
                              "present on this machine, but a CUDA-enabled jaxlib is not"))
  assert quiet.filter(_record("absl", logging.INFO, "step 10", f"{os.sep}experiments{os.sep}t.py"))
  assert cli.QuietLibraries(own_info_only=False).filter(
      _record("absl", logging.INFO, "Saving", "/site-packages/orbax/checkpoint/x.py"))


def _unretrieved_error_records(error, as_task):
  """The records asyncio logs when a future (or a task) that failed with `error` is collected
  with nobody having retrieved its exception."""
  records = []
  handler = logging.Handler()
  handler.emit = records.append
  asyncio_logger = logging.getLogger("asyncio")
  asyncio_logger.addHandler(handler)
  loop = asyncio.new_event_loop()
  try:
    if as_task:
      async def read():
        raise error
      failed = loop.create_task(read())
      loop.run_until_complete(asyncio.wait([failed]))
    else:
      failed = loop.create_future()
      failed.set_exception(error)
    del failed
    gc.collect()
  finally:
    loop.close()
    asyncio_logger.removeHandler(handler)
  return records


@pytest.mark.parametrize("as_task", [False, True], ids=["future", "task"])
def test_unretrieved_tensorstore_read_errors_are_dropped_and_other_ones_pass(as_task):
  quiet = cli.QuietLibraries()
  read_error = ValueError('OUT_OF_RANGE: Error opening "zarr" driver: Error reading "a/.zarray"')
  records = _unretrieved_error_records(read_error, as_task)
  assert len(records) == 1 and not quiet.filter(records[0])
  for other in (ValueError("a bug: no status code"), RuntimeError("OUT_OF_RANGE: not a read")):
    records = _unretrieved_error_records(other, as_task)
    assert len(records) == 1 and quiet.filter(records[0])
  assert quiet.filter(_record("asyncio", logging.ERROR, "Task was destroyed but it is pending!"))


@pytest.mark.parametrize("variable, default", [("TF_CPP_MIN_LOG_LEVEL", "1"),
                                               ("TF_ENABLE_ONEDNN_OPTS", "0")])
def test_tensorflow_info_banners_are_off_unless_the_user_sets_the_level(variable, default):
  assert os.environ.get(variable) is not None  # cli.py sets the default on import
  env = {k: v for k, v in os.environ.items() if k != variable}
  code = f"import os; from experiments import cli; print(os.environ[{variable!r}])"
  done = subprocess.run([sys.executable, "-c", code], cwd=_ROOT, capture_output=True, text=True,
                        env=env, timeout=TIMEOUT_S, check=True)
  assert done.stdout.strip() == default
  code = (f"import os; os.environ[{variable!r}] = 'mine'; from experiments import cli; "
          f"print(os.environ[{variable!r}])")
  done = subprocess.run([sys.executable, "-c", code], cwd=_ROOT, capture_output=True, text=True,
                        env=env, timeout=TIMEOUT_S, check=True)
  assert done.stdout.strip() == "mine"


# ------------------------------------------------------------------------------------------------
# In-process: configuration values.
# ------------------------------------------------------------------------------------------------

def _config(**fields):
  c = default.get_config("bin_small_cnn")
  c.data.source = "synthetic"
  c.data.synthetic_train_size = 64
  c.data.synthetic_test_size = 32
  c.data.num_validation = 16
  c.tensorboard = False
  return set_fields(c, fields, sep="__")


@pytest.mark.parametrize("field, value", [
    ("image_size", 0), ("image_size", -3), ("num_classes", 0), ("num_classes", -1),
    ("num_validation", -1), ("crop_padding", -1), ("prefetch", -2),
    ("synthetic_train_size", 0), ("synthetic_test_size", 0),
])
def test_data_sizes_that_describe_no_data_are_rejected(field, value):
  with pytest.raises(ValueError, match=f"config.data.{field}="):
    input_pipeline.check_data_config(_config(**{f"data__{field}": value}).data)
  with pytest.raises(ValueError, match=f"config.data.{field}="):  # load_data checks first
    input_pipeline.load_data(_config(**{f"data__{field}": value}).data, seed=0)


@pytest.mark.parametrize("field, value", [
    ("keep_checkpoints", 0), ("eval_every_steps", 0), ("checkpoint_every_steps", -5),
    ("num_devices", 0), ("optim__learning_rate", -0.1), ("optim__learning_rate", 0.0),
    ("optim__warmup_epochs", -1.0),
])
def test_schedule_settings_that_cannot_run_are_rejected(field, value):
  with pytest.raises(ValueError, match=f"config.{field.replace('__', '.')}="):
    configs.check_settings(_config(**{field: value}))


@pytest.mark.parametrize("field, value, words", [
    ("batch_size", 0, "config.batch_size=0"), ("batch_size", -8, "config.batch_size=-8"),
    ("eval_batch_size", 0, "config.eval_batch_size=0"), ("num_epochs", 0, "config.num_epochs"),
    ("log_every_steps", 0, "config.log_every_steps"), ("optim__name", "sgdd", "config.optim.name"),
])
def test_the_trainer_rejects_impossible_schedules(field, value, words):
  with pytest.raises(ValueError, match=words):
    trainer.check_config(_config(**{field: value}), 1)


def test_the_defaults_and_presets_pass_the_checks():
  configs.check_settings(default.get_config("bin_vgg16"))
  input_pipeline.check_data_config(default.get_config("bin_vgg16").data)


# Fields a user overrides most, with garbage of every kind from the command line.
_FIELDS = ["batch_size", "eval_batch_size", "num_epochs", "keep_checkpoints", "eval_every_steps",
           "data.image_size", "data.num_validation", "data.crop_padding", "optim.learning_rate",
           "optim.warmup_epochs", "data.synthetic_train_size", "model.options.width"]
_GARBAGE = st.one_of(st.integers(-2**40, 2**40).map(str), st.floats(allow_nan=True).map(str),
                     st.text(max_size=12), st.sampled_from(["", "None", "True", "[1]", "1e400",
                                                            "-0", "0x10", "'3'", "nan"]))


@settings(max_examples=30, deadline=None)
@given(field=st.sampled_from(_FIELDS), value=_GARBAGE)
def test_garbage_overrides_fail_at_parsing_or_in_the_checks(field, value):
  """`--config.<field>=<garbage>`: absl's parser rejects it (a flags error naming the flag), or it
  parses and the checks accept or reject it with a ValueError; never another exception."""
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", train.preset_path("bin_small_cnn"),
                                  flag_values=flag_values, lock_config=True)
  try:
    flag_values(["train", f"--config.{field}={value}"])
  except flags.Error as e:
    assert f"config.{field}" in str(e)
    return
  config = flag_values.config
  config.data.source = "synthetic"
  try:
    configs.check_settings(config)
    input_pipeline.check_data_config(config.data)
    trainer.check_config(config, 1)
  except ValueError as e:
    assert "config." in str(e)


def test_a_work_directory_that_is_a_file_is_rejected(tmp_path):
  a_file = tmp_path / "run"
  a_file.write_text("x")
  with pytest.raises(ValueError, match="--workdir=.* is a file"):
    train.check_command_line(_config(), str(a_file))
  train.check_command_line(_config(), str(tmp_path / "new"))  # a new directory is fine


def test_a_batch_larger_than_the_data_is_rejected(tmp_path):
  with pytest.raises(ValueError, match="config.batch_size=64 exceeds the 48 training images"):
    trainer.train_and_evaluate(_config(batch_size=64), str(tmp_path / "run"))


def test_an_unknown_model_is_rejected(tmp_path):
  with pytest.raises(ValueError, match="unknown model 'resnet50'"):
    trainer.train_and_evaluate(_config(model__name="resnet50"), str(tmp_path / "run"))


# ------------------------------------------------------------------------------------------------
# In-process: data folders, images and tarballs.
# ------------------------------------------------------------------------------------------------

def _png(size=32):
  buffer = io.BytesIO()
  Image.fromarray(np.zeros((size, size, 3), np.uint8)).save(buffer, "PNG")
  return buffer.getvalue()


def _write(root, files):
  for rel, data in files.items():
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
      f.write(data)


FOLDER_CASES = {
    "empty folder": ({}, "has no train/ and test/ sub-folders"),
    "only one split": ({"train/a/1.png": b"P", "train/b/1.png": b"P"},
                       "has no train/ and test/ sub-folders (found: train)"),
    "corrupt image": ({"train/a/1.png": b"garbage", "test/a/1.png": b"P"},
                      "cannot decode image 'train/a/1.png'"),
    "empty image file": ({"train/a/1.png": b"", "test/a/1.png": b"P"},
                         "cannot decode image 'train/a/1.png'"),
    "wrong image size": ({"train/a/1.png": "16", "test/a/1.png": b"P"},
                         "image 'train/a/1.png' is 16x16, expected 32x32"),
    "a split with no images": ({"train/a/1.png": b"P", "test/a/notes.txt": b"x"},
                               "no images found for split 'test'"),
    "different classes": ({"train/a/1.png": b"P", "test/b/1.png": b"P"},
                          "train and test have different classes"),
}


def _materialize(files):
  return {rel: _png() if data == b"P" else _png(int(data)) if isinstance(data, str) else data
          for rel, data in files.items()}


@pytest.mark.parametrize("case", list(FOLDER_CASES))
def test_bad_image_folders_are_rejected_naming_the_problem(case, tmp_path):
  files, words = FOLDER_CASES[case]
  root = tmp_path / "data"
  root.mkdir()
  _write(str(root), _materialize(files))
  with pytest.raises(ValueError, match=_literal(words)):
    image_folder.load_image_folder(str(root), image_size=32, cache_dir=str(tmp_path / "cache"))


def _literal(words):
  import re  # pylint: disable=g-import-not-at-top
  return re.escape(words)


def test_a_missing_data_path_names_the_setting(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.data.path"):
    image_folder.load_image_folder(str(tmp_path / "nowhere"), image_size=32)
  with pytest.raises(ValueError, match="config.data.path"):
    image_folder.load_image_folder("", image_size=32)


def test_a_tarball_that_is_not_gzip_or_is_truncated_is_rejected(tmp_path):
  not_gzip = tmp_path / "cifar.tar.gz"
  not_gzip.write_bytes(b"plain text, not gzip")
  with pytest.raises(ValueError, match="cannot read tarball"):
    image_folder.load_image_folder(str(not_gzip), image_size=32, cache_dir=str(tmp_path / "c"))
  truncated = tmp_path / "truncated.tar.gz"
  with tarfile.open(truncated, "w:gz") as tar:
    for rel in ("train/a/1.png", "test/a/1.png"):
      data = _png()
      info = tarfile.TarInfo(rel)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  with open(truncated, "r+b") as f:
    f.truncate(60)
  with pytest.raises(ValueError, match="cannot read tarball"):
    image_folder.load_image_folder(str(truncated), image_size=32, cache_dir=str(tmp_path / "c"))
  a_text_file = tmp_path / "cifar.txt"
  a_text_file.write_text("x")
  with pytest.raises(ValueError, match="is a file but not a tarball"):
    image_folder.load_image_folder(str(a_text_file), image_size=32)


@settings(max_examples=15, deadline=None)
@given(data=st.binary(max_size=300))
def test_random_bytes_as_an_image_are_rejected(data, tmp_path_factory):
  root = tmp_path_factory.mktemp("random_image")
  _write(str(root), {"train/a/1.png": data, "test/a/1.png": _png()})
  with pytest.raises(ValueError, match="train/a/1.png"):
    image_folder.load_image_folder(str(root), image_size=32, cache_dir=str(root / "cache"))


# ------------------------------------------------------------------------------------------------
# In-process: the work directories evaluate, export and report read.
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["missing", "a file", "empty"])
def test_evaluate_export_and_report_reject_a_bad_work_directory(kind, tmp_path):
  workdir = tmp_path / "run"
  if kind == "a file":
    workdir.write_text("x")
  elif kind == "empty":
    workdir.mkdir()
  for call in (lambda: evaluate.evaluate_workdir(str(workdir)),
               lambda: export.export_workdir(str(workdir), str(tmp_path / "out")),
               lambda: report.build_report([str(workdir)], str(tmp_path / "report"))):
    with pytest.raises(cli.USER_ERRORS) as raised:
      call()
    assert str(workdir) in str(raised.value) or "run" in str(raised.value), raised.value


def test_evaluate_rejects_an_unknown_split(tmp_path):
  with pytest.raises(ValueError, match="split"):
    evaluate.evaluate_workdir(str(tmp_path), split="tset")
