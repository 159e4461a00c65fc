"""Tests for training (experiments/trainer.py, experiments/train.py): real tiny runs on synthetic data.

A run of bin_small_cnn (two XNOR blocks) on synthetic data takes seconds; the baseline run is shared
by the tests that only inspect its outputs.
"""

import dataclasses
import functools
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import configs
from experiments import checkpointing
from experiments import input_pipeline
from experiments import metrics as metrics_lib
from experiments import trainer
from experiments import train as train_main
from experiments.configs import default
from xnorjax import models

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CIFAR10 = os.environ.get(input_pipeline.CIFAR10_ENV_VAR, "")
PRESETS = ("vgg16", "bin_vgg16", "nin", "bin_nin", "resnet18", "bin_resnet18")


def tiny_config(model="bin_small_cnn", **overrides):
  """`configs.TINY` with 512 training images: 2 epochs of 12 steps."""
  return configs.tiny_config(model, {
      "data.synthetic_train_size": 512, "data.synthetic_test_size": 128,
      "data.num_validation": 128, "eval_batch_size": 64, "log_every_steps": 4, **overrides})


def _params(results):
  return jax.tree.map(np.asarray, jax.device_get(results["state"]["params"]))


def _read_jsonl(workdir):
  with open(os.path.join(workdir, metrics_lib.METRICS_FILE)) as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("baseline"))
  return workdir, trainer.train_and_evaluate(tiny_config(), workdir)


# ---- A whole run ---------------------------------------------------------------------------------

def test_training_learns_and_writes_its_outputs(baseline):
  workdir, results = baseline
  assert results["interrupted_by"] is None and results["last_step"] == 24
  assert results["test_accuracy"] > 0.3  # 10 classes: chance is 0.1.
  records = _read_jsonl(workdir)
  train_keys = {"epoch", "learning_rate", "train_loss", "train_accuracy", "images_per_second",
                "input_images_per_second", "input_wait_fraction"}
  eval_keys = {"val_loss", "val_accuracy", "test_loss", "test_accuracy", "best_val_accuracy"}
  assert [r["step"] for r in records if train_keys <= set(r)] == [4, 8, 12, 16, 20, 24]
  evals = [r for r in records if eval_keys <= set(r)]
  assert [r["step"] for r in evals] == [12, 24]
  assert all(np.isfinite(r["train_loss"]) and r["images_per_second"] > 0 for r in records
             if "train_loss" in r)
  # Where the loop's time went: evaluations and checkpoint saves took some, the steps the rest.
  seconds = results["seconds"]
  assert set(seconds) == {"loop", "evaluation", "checkpoint_saves", "training"}
  assert seconds["evaluation"] > 0 and seconds["checkpoint_saves"] > 0 and seconds["training"] > 0
  assert seconds["evaluation"] + seconds["checkpoint_saves"] + seconds["training"] == (
      pytest.approx(seconds["loop"]))
  with open(os.path.join(workdir, "results.json")) as f:
    assert json.load(f)["seconds"] == seconds
  # The checkpoint for the test accuracy is the one with the best validation accuracy.
  best = max(evals, key=lambda r: r["val_accuracy"])
  assert results["best_step"] == best["step"]
  assert results["best_val_accuracy"] == pytest.approx(best["val_accuracy"])
  assert records[-1]["final_test_accuracy"] == pytest.approx(results["test_accuracy"])
  with open(os.path.join(workdir, trainer.CONFIG_FILE)) as f:
    assert json.load(f)["model"]["name"] == "bin_small_cnn"
  with open(os.path.join(workdir, trainer.RESULTS_FILE)) as f:
    assert json.load(f)["test_accuracy"] == pytest.approx(results["test_accuracy"])
  assert os.listdir(os.path.join(workdir, checkpointing.LATEST_DIR))
  assert os.listdir(os.path.join(workdir, checkpointing.BEST_DIR))
  if _tensorflow_available():
    assert glob.glob(os.path.join(workdir, "events.out.tfevents.*"))


def _tensorflow_available():
  try:
    import tensorflow  # pylint: disable=unused-import,g-import-not-at-top
    return True
  except ImportError:
    return False


def test_latent_binary_kernels_stay_clipped(baseline):
  _, results = baseline
  model = trainer.create_model(tiny_config(), 0)
  mask = trainer.split_model(model).binary_mask
  leaves = [p for p, m in zip(jax.tree.leaves(_params(results)), jax.tree.leaves(mask)) if m]
  assert len(leaves) == 2
  assert max(np.abs(p).max() for p in leaves) <= 1.0


def test_cross_entropy_with_label_smoothing(rng):
  logits = jnp.asarray(rng.normal(size=(5, 4)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 4, 5))
  log_p = np.asarray(jax.nn.log_softmax(logits))
  targets = np.full((5, 4), 0.2 / 4) + 0.8 * np.eye(4)[np.asarray(labels)]
  np.testing.assert_allclose(trainer.cross_entropy(logits, labels, 0.2),
                             -(targets * log_p).sum(-1), rtol=1e-6)
  np.testing.assert_allclose(trainer.cross_entropy(logits, labels),
                             -log_p[np.arange(5), np.asarray(labels)], rtol=1e-6)


def test_evaluate_ignores_the_padding_of_the_last_batch(rng):
  model = models.create_model("small_cnn", width=0.125, rngs=nnx.Rngs(0))
  parts = trainer.split_model(model)
  mesh = trainer.make_mesh(1)
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  mean, std = jnp.full(3, 0.5), jnp.full(3, 0.25)
  eval_fn = jax.jit(functools.partial(trainer.eval_step, graphdef=parts.eval_graphdef, mean=mean,
                                      std=std))
  split = input_pipeline.Split(rng.integers(0, 256, (37, 32, 32, 3), dtype=np.uint8),
                               rng.integers(0, 10, 37).astype(np.int32))
  state = {"params": parts.params, "rest": parts.rest}
  padded = trainer.evaluate(eval_fn, state, split, 16, sharding)  # 3 batches, 11 padding rows.
  model.eval()
  logits = model(trainer.normalize(jnp.asarray(split.images), mean, std))
  loss = float(trainer.cross_entropy(logits, jnp.asarray(split.labels)).mean())
  accuracy = float(np.mean(np.argmax(np.asarray(logits), -1) == split.labels))
  assert padded["loss"] == pytest.approx(loss, rel=1e-5)
  assert padded["accuracy"] == pytest.approx(accuracy)


# ---- Interruption and resumption --------------------------------------------------------------

def test_interrupted_and_resumed_run_ends_with_the_same_parameters(baseline, tmp_path, monkeypatch):
  _, uninterrupted = baseline
  workdir = str(tmp_path / "run")
  real_batches = input_pipeline.train_batches

  def batches_then_sigterm(split, spec, start_step, end_step):
    for item in real_batches(split, spec, start_step, end_step):
      if item[0] == 7:  # Mid-epoch (12 steps per epoch): a real SIGTERM to this process.
        os.kill(os.getpid(), signal.SIGTERM)
      yield item

  monkeypatch.setattr(input_pipeline, "train_batches", batches_then_sigterm)
  first = trainer.train_and_evaluate(tiny_config(), workdir)
  assert first["interrupted_by"] == "SIGTERM"
  assert 0 < first["last_step"] < 24  # The prefetcher runs ahead: it stops at or before step 8.
  ckpts = checkpointing.Checkpoints(workdir)
  assert ckpts.latest_step() == first["last_step"]
  ckpts.close()
  monkeypatch.setattr(input_pipeline, "train_batches", real_batches)
  resumed = trainer.train_and_evaluate(tiny_config(), workdir)
  assert resumed["interrupted_by"] is None and resumed["last_step"] == 24
  # Same computations in the same order on one device: equal up to float rounding (CPU XLA is
  # deterministic, so in practice bit-identical).
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               _params(resumed), _params(uninterrupted))
  assert resumed["test_accuracy"] == pytest.approx(uninterrupted["test_accuracy"])


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(baseline, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(baseline[0], workdir)
  config = tiny_config(num_epochs=4)
  config.optim.learning_rate = 1e30
  with pytest.raises(trainer.NonFiniteLossError, match=r"at step (2[5-9]|3\d|4\d).*last good "
                     r"checkpoint is step 24"):
    trainer.train_and_evaluate(config, workdir, allow_config_change=True)
  ckpts = checkpointing.Checkpoints(workdir)
  assert ckpts.latest_step() == 24
  ckpts.close()


def test_resuming_with_a_changed_configuration_needs_permission(baseline, tmp_path):
  """A schedule or learning rate that differs from the checkpoints' config.json would mix two
  runs silently: it stops with the changed fields named, before any step; operational fields
  (logging, evaluation and checkpoint frequency, data location) may change."""
  workdir = str(tmp_path / "run")
  shutil.copytree(baseline[0], workdir)
  changed = tiny_config(num_epochs=3, **{"optim.learning_rate": 0.02})
  with pytest.raises(trainer.ConfigChangedError,
                     match=r"num_epochs: 2 -> 3; optim.learning_rate: 0.01 -> 0.02\). Resume with "
                     r"the same configuration.*--allow_config_change"):
    trainer.train_and_evaluate(changed, workdir)
  with open(os.path.join(workdir, trainer.CONFIG_FILE)) as f:
    assert json.load(f)["num_epochs"] == 2  # untouched
  operational = tiny_config(log_every_steps=6, eval_batch_size=32, keep_checkpoints=3,
                            **{"data.cache_dir": str(tmp_path / "cache")})
  assert trainer.train_and_evaluate(operational, workdir)["last_step"] == 24  # nothing left to do
  results = trainer.train_and_evaluate(changed, workdir, allow_config_change=True)
  assert results["last_step"] == 36
  with open(os.path.join(workdir, trainer.CONFIG_FILE)) as f:
    assert json.load(f)["num_epochs"] == 3
  with open(os.path.join(workdir, trainer.CONFIG_FILE), "w") as f:
    f.write("{not json")
  with pytest.raises(ValueError, match=r"config.json \(the configuration of the checkpoints in "
                     r".*\) is not valid JSON"):
    trainer.train_and_evaluate(changed, workdir)


def test_resuming_on_other_data_needs_permission(baseline, tmp_path, monkeypatch):
  """Same configuration, other images (as when data.source='auto' resolves to another copy):
  the checkpoints' data fingerprint does not match, and the run stops before any step."""
  workdir = str(tmp_path / "run")
  shutil.copytree(baseline[0], workdir)
  real_load = input_pipeline.load_data

  def one_pixel_changed(cfg, *, seed):
    data = real_load(cfg, seed=seed)
    images = data.train.images.copy()
    images[0, 0, 0, 0] ^= 1
    return dataclasses.replace(data, train=input_pipeline.Split(images, data.train.labels))

  monkeypatch.setattr(input_pipeline, "load_data", one_pixel_changed)
  with pytest.raises(trainer.ConfigChangedError, match=r"the training data \(synthetic, "
                     r"fingerprint [0-9a-f]{16}\) differ from those the checkpoints were trained on"):
    trainer.train_and_evaluate(tiny_config(), workdir)
  results = trainer.train_and_evaluate(tiny_config(), workdir, allow_config_change=True)
  assert results["last_step"] == 24  # the finished run, resumed on the changed data


# ---- Data parallelism --------------------------------------------------------------------------

def test_four_simulated_devices_match_one_device(tmp_path):
  """The same steps sharded over 4 CPU devices give the parameters of one device."""
  script = textwrap.dedent(f"""
      import json, sys
      import jax, numpy as np
      sys.path[:0] = [{REPO!r}, {os.path.join(REPO, "tests")!r}]
      from helpers.trees import float_leaves
      from tests.experiments.test_train import tiny_config
      from experiments import trainer
      assert jax.device_count() == 4, jax.devices()
      out = {{}}
      for n in (1, 4):
        c = tiny_config("small_cnn", num_devices=n, num_epochs=1, eval_test_during_training=False)
        c.num_train_steps = 4
        c.data.synthetic_test_size = 64
        c.optim.name = "sgd"
        c.optim.learning_rate = 0.05
        c.data.prefetch = 1
        r = trainer.train_and_evaluate(c, {str(tmp_path)!r} + f"/run{{n}}")
        out[n] = float_leaves(r["state"])
      diffs = [float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(a))), 1.0))
               for a, b in zip(out[1], out[4])]
      print("RELDIFF", json.dumps(max(diffs)))
  """)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rel = json.loads(proc.stdout.split("RELDIFF")[-1])
  # 4 SGD steps; only the summation order of the batch reductions differs (per device, then
  # across devices). Measured relative to max(|leaf|, 1): rounding differences are absolute-sized.
  # 1.2e-7 after 1 step, 2.7e-7 after 4 on an AVX-512 Xeon; longer runs drift chaotically once
  # rounding flips a near-tie (a max-pool, a ReLU at 0): 3e-4 after 12 steps there. Feeding every
  # device the same quarter of each batch gave 0.11 after 12 steps.
  assert rel < 1e-5


_RUN_AND_SAVE_PARAMETERS = textwrap.dedent("""
    import sys
    import jax, numpy as np
    sys.path[:0] = [sys.argv[1], sys.argv[1] + "/tests"]
    from helpers.trees import float_leaves
    from tests.experiments.test_train import tiny_config
    from experiments import trainer
    workdir, out, process_id, num_processes, address = sys.argv[2:7]
    c = tiny_config("bin_small_cnn", num_epochs=1, eval_test_during_training=False)
    c.optim.name = "sgd"
    c.optim.learning_rate = 0.05
    if int(num_processes) > 1:
      c.distributed = True
      c.coordinator_address = address
      c.num_processes = int(num_processes)
      c.process_id = int(process_id)
    r = trainer.train_and_evaluate(c, workdir)
    assert jax.process_count() == int(num_processes), jax.process_count()
    np.savez(out, *float_leaves(r["state"]), test_accuracy=r["test_accuracy"],
             devices=jax.device_count())
    """)


def test_two_processes_match_one_process(tmp_path):
  """jax.distributed: 2 processes x 2 CPU devices (one global batch sharded over 4 devices, each
  process feeding its half) end with the parameters of one process on one device."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    address = f"127.0.0.1:{s.getsockname()[1]}"

  def start(workdir, process_id, num_processes, devices):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    # Logs go to files: a process blocked on a full pipe would miss the shutdown barrier.
    with open(tmp_path / f"{workdir}{process_id}.log", "w") as log:
      return subprocess.Popen(
          [sys.executable, "-c", _RUN_AND_SAVE_PARAMETERS, REPO, str(tmp_path / workdir),
           str(tmp_path / f"{workdir}{process_id}.npz"), str(process_id), str(num_processes),
           address], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)

  procs = {"multi0": start("multi", 0, 2, devices=2), "multi1": start("multi", 1, 2, devices=2),
           "single0": start("single", 0, 1, devices=1)}
  try:
    for name, proc in procs.items():
      proc.wait(timeout=600)
      assert proc.returncode == 0, (tmp_path / f"{name}.log").read_text()[-3000:]
  finally:  # A failed process can leave its peer waiting for it.
    for proc in procs.values():
      proc.kill()
  single = np.load(tmp_path / "single0.npz")
  assert int(single["devices"]) == 1
  for i in range(2):
    multi = np.load(tmp_path / f"multi{i}.npz")
    assert int(multi["devices"]) == 4
    assert multi["test_accuracy"] == single["test_accuracy"]
    arrays = [k for k in single.files if k.startswith("arr_")]
    assert arrays and sorted(arrays) == sorted(k for k in multi.files if k.startswith("arr_"))
    for k in arrays:
      a, b = single[k], multi[k]
      # One SGD epoch; only the summation order of the reductions differs (relative to
      # max(|leaf|, 1), as in test_four_simulated_devices_match_one_device).
      np.testing.assert_allclose(b, a, rtol=0, atol=1e-4 * max(float(np.max(np.abs(a))), 1.0))
  # The chief alone wrote the run's outputs.
  assert len(_read_jsonl(str(tmp_path / "multi"))) == len(_read_jsonl(str(tmp_path / "single")))
  assert os.path.exists(tmp_path / "multi" / "results.json")


@pytest.mark.parametrize("setting, message", [
    ({"coordinator_address": "127.0.0.1:1234"},
     "config.coordinator_address is set but config.distributed is False"),
    ({"distributed": True, "num_processes": 0}, "config.num_processes must be positive"),
    ({"distributed": True, "num_processes": 2, "process_id": 2},
     r"config.process_id must be in \[0, config.num_processes\), got 2 of 2"),
])
def test_distributed_settings_are_checked(setting, message):
  c = tiny_config()
  for key, value in setting.items():
    c[key] = value
  with pytest.raises(ValueError, match=message):
    trainer.distributed_arguments(c)


# ---- Metric writers without TensorFlow ------------------------------------------------------------

def test_writer_falls_back_without_tensorflow(tmp_path, monkeypatch):
  # As if TensorFlow were absent: importing clu.metric_writers fails.
  monkeypatch.setitem(sys.modules, "clu.metric_writers", None)
  import clu  # pylint: disable=g-import-not-at-top
  monkeypatch.delattr(clu, "metric_writers", raising=False)
  messages = []
  monkeypatch.setattr(logging, "warning", lambda msg, *a: messages.append(msg % a))
  writer = metrics_lib.create_writer(str(tmp_path))
  writer.write_scalars(3, {"train_loss": np.float32(1.5), "epoch": 0.25})
  writer.close()
  assert any("TensorBoard event files are not written" in m for m in messages)
  assert _read_jsonl(str(tmp_path)) == [{"step": 3, "train_loss": 1.5, "epoch": 0.25}]
  assert not glob.glob(str(tmp_path / "events.out.tfevents.*"))


def test_command_line_trains_from_an_image_folder_without_tensorflow(tmp_path):
  """`python -m experiments.train` with TensorFlow unimportable, on a PNG tree."""
  from PIL import Image
  rng = np.random.default_rng()
  for split, count in (("train", 40), ("test", 10)):
    for label, cls in enumerate(("cat", "dog")):
      os.makedirs(tmp_path / "data" / split / cls)
      for i in range(count):
        pixels = np.clip(rng.normal(60 + 120 * label, 30, size=(32, 32, 3)), 0, 255)
        Image.fromarray(pixels.astype(np.uint8)).save(tmp_path / "data" / split / cls / f"{i}.png")
  launcher = ("import runpy, sys; sys.modules['tensorflow'] = None; "
              "sys.modules['tensorflow_datasets'] = None; "
              "runpy.run_module('experiments.train', run_name='__main__')")
  args = ["--model=bin_small_cnn", f"--workdir={tmp_path / 'run'}",
          "--config.data.source=image_folder", f"--config.data.path={tmp_path / 'data'}",
          f"--config.data.cache_dir={tmp_path / 'cache'}", "--config.data.num_classes=2",
          "--config.data.num_validation=20", "--config.batch_size=20",
          "--config.eval_batch_size=20", "--config.num_epochs=2", "--config.log_every_steps=1",
          "--config.model.options.width=0.25"]
  proc = subprocess.run([sys.executable, "-c", launcher, *args], cwd=REPO, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "bin_small_cnn: test accuracy" in proc.stdout
  assert "TensorBoard event files are not written" in proc.stderr
  assert "compression factor" in proc.stderr  # xnorjax.summary, logged at the start of training
  records = _read_jsonl(str(tmp_path / "run"))
  assert [r["step"] for r in records if "train_loss" in r] == [1, 2, 3, 4, 5, 6]  # 60 / 20 per epoch.


@pytest.mark.parametrize("args,message", [
    (["--model=vgg17"], "unknown model 'vgg17'"),
    (["--model=bin_vgg16", "--config.optim.nmae=adam"], "nmae"),
    (["--model=vgg16", "--config.model.options.binarize_first_layer=True"],
     "no field \"binarize_first_layer\""),
])
def test_command_line_errors_are_clear(tmp_path, args, message):
  proc = subprocess.run([sys.executable, "-m", "experiments.train", f"--workdir={tmp_path}", *args],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert message in proc.stderr


# ---- Configurations ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", PRESETS)
def test_presets_name_their_model_and_command(name):
  path = train_main.preset_path(name)
  assert path.endswith(f"configs/{name}.py")
  module = __import__(f"experiments.configs.{name}", fromlist=["get_config"])
  config = module.get_config()
  assert config.model.name == name
  assert f"python -m experiments.train --model={name} --workdir=runs/{name}" in module.__doc__
  accepted = set(models.get_model_fn(name).__code__.co_varnames)
  assert set(config.model.options) <= accepted


def test_models_without_a_preset_use_the_defaults():
  assert train_main.preset_path("bin_small_cnn").endswith("default.py:bin_small_cnn")


@pytest.mark.slow
@pytest.mark.skipif(not CIFAR10, reason=f"${input_pipeline.CIFAR10_ENV_VAR} is not set (real CIFAR-10 copy)")
def test_real_cifar10_small_binary_cnn_learns(tmp_path):
  """300 steps of bin_small_cnn on the real CIFAR-10 copy: test accuracy well above chance."""
  config = tiny_config("bin_small_cnn", num_train_steps=300, batch_size=64, eval_batch_size=1000,
                       eval_every_steps=300, log_every_steps=50, eval_test_during_training=False)
  config.data.source = "image_folder"
  config.data.path = CIFAR10
  config.data.num_validation = 5000
  config.data.cache_dir = os.environ.get("XNORJAX_CACHE_DIR") or str(tmp_path / "cache")
  config.model.options.width = 0.5
  config.optim.learning_rate = 3e-3
  config.optim.warmup_epochs = 0.05
  results = trainer.train_and_evaluate(config, str(tmp_path / "run"))
  assert results["test_accuracy"] > 0.3  # Chance is 0.1.


def test_bench_train_compares_with_the_same_machine_pytorch_run_when_there_is_one():
  from experiments.bench import train as bench_train  # pylint: disable=g-import-not-at-top
  row = {"model": "vgg16", "train_images_per_second": 120.0}
  measured = bench_train.compare(dict(row), {"train_images_per_second": 100.0,
                                             "forward_images_per_second": 400.0})
  assert measured["pytorch_source"] == "measured in this run"
  assert measured["ratio_to_pytorch"] == 1.2 and not measured["meets_target"]
  quoted = bench_train.compare(dict(row), None)
  assert quoted["pytorch_train_images_per_second"] == 97.0
  assert "another machine" in quoted["pytorch_source"]
  assert quoted["ratio_to_pytorch"] == round(120 / 97, 3)
  other = bench_train.compare({"model": "bin_reactnet18", "train_images_per_second": 50.0}, None)
  assert other["pytorch_source"].startswith("none") and "ratio_to_pytorch" not in other


def test_bench_train_reports_a_failing_pytorch_baseline():
  from experiments.bench import train as bench_train  # pylint: disable=g-import-not-at-top
  with pytest.raises(RuntimeError, match="PyTorch baseline failed under --pytorch_python=/bin/false"):
    bench_train.bench_pytorch("/bin/false", ["vgg16"], 8, 1, 1)


def _vgg16_conv_macs(in_channels):
  """Per-image MACs of VGG16's thirteen 3x3 SAME convs on 32x32 inputs, counted by hand."""
  macs, c, hw = [], in_channels, 32
  for stage in ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)):
    for out in stage:
      macs.append(hw * hw * 9 * c * out)
      c = out
    hw //= 2
  return macs


def test_bench_train_counts_the_float_products_of_a_training_step():
  from experiments.bench import train as bench_train  # pylint: disable=g-import-not-at-top
  from experiments.configs import bin_vgg16, vgg16  # pylint: disable=g-import-not-at-top
  float_convs = _vgg16_conv_macs(3)
  dense = 512 * 10
  # vgg16: forward, input gradient and kernel gradient of every layer, but no input gradient of
  # the first conv.
  assert bench_train.float_training_macs(trainer.create_model(vgg16.get_config(), 0)) == (
      3 * (sum(float_convs) + dense) - float_convs[0])
  # bin_vgg16: the float stem 3->64 and classifier as above; the thirteen binary convs (the first
  # of them 64->64) only have their two gradients in floating point.
  stem = 32 * 32 * 9 * 3 * 64
  binary = _vgg16_conv_macs(64)
  assert bench_train.float_training_macs(trainer.create_model(bin_vgg16.get_config(), 0)) == (
      3 * (stem + dense) - stem + 2 * sum(binary))


def test_bench_train_roofline_bounds_images_per_second_at_the_matmul_ceiling():
  from experiments.bench import train as bench_train  # pylint: disable=g-import-not-at-top
  row = bench_train.compare({"model": "vgg16", "train_images_per_second": 50.0},
                            {"train_images_per_second": 100.0, "forward_images_per_second": 1.0})
  row = bench_train.roofline(row, macs_per_image=10**9, ceiling_gmacs=200.0)
  assert row["ceiling_images_per_second"] == 200.0  # 200 GMAC/s / 1 GMAC per image.
  assert row["target_images_per_second"] == 150.0
  assert row["target_over_ceiling"] == 0.75
  assert row["float_gmac_per_second"] == 50.0


def test_config_changes_ignore_fields_added_since_the_run_while_they_hold_their_default():
  config = default.get_config()
  saved = json.loads(config.to_json_best_effort())
  del saved["distill"]  # a run saved before distillation existed
  assert trainer.config_changes(saved, config) == []
  config.distill.weight = 0.5  # but a non-default value of such a field is a change
  assert trainer.config_changes(saved, config) == ["distill.weight: (absent) -> 0.5"]
  saved_seed = dict(saved, seed=saved["seed"] + 1)  # present fields compare as before
  assert trainer.config_changes(saved_seed, config)[-1].startswith("seed: ")
