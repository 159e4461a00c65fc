"""Tests for the on-device input pipeline (experiments/device_pipeline.py, config.data.on_device):
its batches are the host pipeline's, and a run trains, resumes and shards as the host path does."""

import functools
import json
import os
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers.configs import set_fields
from experiments import checkpointing
from experiments import device_pipeline
from experiments import input_pipeline
from experiments import trainer
from experiments.configs import default
from helpers.trees import float_leaves

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A run of seconds: bin_small_cnn on synthetic data, 2 epochs of 8 SGD steps; chunks of 3 steps do
# not divide the logging (4) and evaluation (8) intervals, so chunks are cut short and padded.
# Validation and test splits of one size (40: the last batch of 32 is padded) share one compiled
# evaluation.
OVERRIDES = {
    "data.source": "synthetic", "data.synthetic_train_size": 296, "data.synthetic_test_size": 40,
    "data.num_validation": 40, "batch_size": 32, "eval_batch_size": 32,
    "model.options.width": 0.25, "num_epochs": 2, "log_every_steps": 4, "optim.name": "sgd",
    "optim.learning_rate": 0.05, "optim.warmup_epochs": 0.5, "tensorboard": False,
    "steps_per_dispatch": 3,
}
MODEL = "bin_small_cnn"


def device_config(model=MODEL, **overrides):
  return set_fields(default.get_config(model), {**OVERRIDES, "data.on_device": True, **overrides})


def _params(results):
  return jax.tree.map(np.asarray, jax.device_get(results["state"]["params"]))


def _mesh_shardings():
  mesh = trainer.make_mesh(1)
  return mesh, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))


# ---- The batches ---------------------------------------------------------------------------------

@pytest.mark.parametrize("augment", [True, False])
def test_device_batches_are_the_host_pipelines_batches(rng, augment):
  """Steps 3..8 of a 100-image split in batches of 16 (6 steps per epoch, 4 images dropped):
  across the epoch boundary, through the scan of a chunk padded from 6 to 8 steps."""
  split = input_pipeline.Split(rng.integers(0, 256, (100, 12, 10, 3), dtype=np.uint8),
                               rng.integers(0, 10, 100).astype(np.int32))
  spec = input_pipeline.TrainBatchSpec(batch_size=16, seed=int(rng.integers(1000)), padding=3,
                                       augment=augment)
  mesh, batch_sharding = _mesh_shardings()

  def step_fn(state, images, labels):  # Returns the batch it was given as its "metrics".
    return state + 1, {"images": images, "labels": labels}

  chunk_fn = jax.jit(device_pipeline.make_train_chunk(step_fn, padding=spec.padding,
                                                      batch_sharding=batch_sharding))
  chunk = device_pipeline.chunk_inputs(len(split), spec, 3, 6, length=8)
  count, out = jax.device_get(chunk_fn(jnp.int32(0), device_pipeline.to_device(split, mesh),
                                       device_pipeline.put_chunk(chunk, mesh)))
  assert count == 6  # the two padding steps left the state alone
  for i, step in enumerate(range(3, 9)):
    images, labels = input_pipeline.train_batch(split, spec, step)
    assert out["images"][i].dtype == np.uint8
    np.testing.assert_array_equal(out["images"][i], images, err_msg=f"step {step}")
    np.testing.assert_array_equal(out["labels"][i], labels, err_msg=f"step {step}")
  assert not out["images"][6:].any() and not out["labels"][6:].any()


def test_chunk_inputs_check_the_number_of_steps():
  spec = input_pipeline.TrainBatchSpec(batch_size=4, seed=0)
  with pytest.raises(ValueError, match=r"num_steps=5 must be in \[1, length=4\]"):
    device_pipeline.chunk_inputs(40, spec, 0, 5, length=4)


def test_chunks_end_at_every_interval_and_at_the_end():
  ends, step = [], 0
  while step < 30:
    step = device_pipeline.chunk_end(step, 30, 5, 4, 12)
    ends.append(step)
  assert ends == [4, 8, 12, 16, 20, 24, 28, 30]
  assert device_pipeline.chunk_end(13, 30, 2, 4) == 15
  assert device_pipeline.chunk_end(29, 30, 50, 100) == 30


def test_device_evaluation_equals_the_host_evaluation(rng):
  """37 images in batches of 16: the last batch has 11 padding rows, masked."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from xnorjax import models  # pylint: disable=g-import-not-at-top
  model = models.create_model("small_cnn", width=0.125, rngs=nnx.Rngs(0))
  parts = trainer.split_model(model)
  mesh, batch_sharding = _mesh_shardings()
  mean, std = jnp.full(3, 0.5), jnp.full(3, 0.25)
  step = functools.partial(trainer.eval_step, graphdef=parts.eval_graphdef, mean=mean, std=std)
  split = input_pipeline.Split(rng.integers(0, 256, (37, 32, 32, 3), dtype=np.uint8),
                               rng.integers(0, 10, 37).astype(np.int32))
  state = {"params": parts.params, "rest": parts.rest}
  host = trainer.evaluate(jax.jit(step), state, split, 16, batch_sharding)
  device = device_pipeline.Evaluator(step, 16, mesh)(state, split)
  assert device["accuracy"] == host["accuracy"]
  # The same sums in the same order; only XLA's fusion of the scanned step may differ.
  assert device["loss"] == pytest.approx(host["loss"], rel=1e-6)


# ---- Runs ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def device_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("device"))
  return workdir, trainer.train_and_evaluate(device_config(), workdir)


def test_device_run_reaches_the_host_runs_parameters(device_run, tmp_path):
  workdir, device = device_run
  host = trainer.train_and_evaluate(device_config(**{"data.on_device": False}), str(tmp_path))
  assert device["last_step"] == host["last_step"] == 16 and device["interrupted_by"] is None
  # The same batches and the same step function, scanned instead of called once per step: equal
  # up to the float rounding of a differently fused step (on the CPU, in practice bit-identical).
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               _params(device), _params(host))
  assert device["test_accuracy"] == pytest.approx(host["test_accuracy"])
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  # Logging and evaluation land on the host loop's steps, though 3 does not divide 4 or 8.
  assert [r["step"] for r in records if "train_loss" in r] == [4, 8, 12, 16]
  assert [r["step"] for r in records if "val_accuracy" in r] == [8, 16]
  assert all(r["images_per_second"] > 0 for r in records if "train_loss" in r)


def test_device_run_resumes_after_sigterm_as_if_uninterrupted(device_run, tmp_path):
  _, uninterrupted = device_run
  workdir = tmp_path / "run"
  flags = [f"--config.{k}={v}" for k, v in {**OVERRIDES, "data.on_device": True}.items()]
  command = [sys.executable, "-m", "experiments.train",
             f"--config=experiments/configs/default.py:{MODEL}", f"--workdir={workdir}", *flags]
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
  proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  lines = []
  try:
    for line in proc.stdout:  # SIGTERM once the first steps are logged (step 4 of 16).
      lines.append(line)
      if "step 4/16" in line:
        proc.send_signal(signal.SIGTERM)
        break
    lines += proc.stdout.readlines()
    proc.wait(timeout=300)
  finally:
    proc.kill()
  output = "".join(lines)
  assert proc.returncode == 0, output[-3000:]
  stopped = [l for l in lines if l.startswith("Interrupted by SIGTERM after step")]
  assert stopped, output[-3000:]
  last = int(stopped[0].split("after step ")[1].split(";")[0])
  assert 4 <= last < 16
  ckpts = checkpointing.Checkpoints(str(workdir))
  assert ckpts.latest_step() == last
  ckpts.close()
  # Resumed in this process (a second process would only add its start-up).
  resumed = trainer.train_and_evaluate(device_config(), str(workdir))
  assert resumed["interrupted_by"] is None and resumed["last_step"] == 16
  # Same steps in the same order, one device: as test_device_run_reaches_the_host_runs_parameters.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               _params(resumed), _params(uninterrupted))
  assert resumed["test_accuracy"] == pytest.approx(uninterrupted["test_accuracy"])


def test_device_run_sharded_over_four_devices_matches_one_device(tmp_path):
  """4 steps of `device_config` (chunks of 2) with the batches sharded over 4 simulated CPU devices
  give the parameters of one device."""
  script = textwrap.dedent(f"""
      import sys
      import jax, numpy as np
      sys.path[:0] = [{REPO!r}, {os.path.join(REPO, "tests")!r}]
      from helpers.trees import float_leaves
      from tests.experiments.test_device_pipeline import device_config
      from experiments import trainer
      assert jax.device_count() == 4, jax.devices()
      for n in (1, 4):
        c = device_config(num_devices=n, num_train_steps=4, steps_per_dispatch=2)
        r = trainer.train_and_evaluate(c, {str(tmp_path)!r} + f"/run{{n}}")
        np.savez({str(tmp_path)!r} + f"/leaves{{n}}.npz", *float_leaves(r["state"]))
  """)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  one, sharded = (np.load(tmp_path / f"leaves{n}.npz") for n in (1, 4))
  assert len(sharded.files) == len(one.files) > 0
  # Only the summation order of the batch reductions differs (per device, then across devices),
  # measured relative to max(|leaf|, 1) as in
  # tests/experiments/test_train.py::test_four_simulated_devices_match_one_device, and after as few
  # steps, before rounding flips a near-tie (after 16 steps one BatchNorm offset of 3e-3 differed by
  # 1e-4).
  for name in one.files:
    a = one[name]
    np.testing.assert_allclose(sharded[name], a, rtol=0,
                               atol=1e-5 * max(float(np.max(np.abs(a))), 1.0))


def test_a_log_window_of_only_the_compiling_chunk_reports_no_throughput(tmp_path):
  """Chunks as long as the logging interval (the defaults: 50 and 50): the first window holds only
  the compiling chunk, whose time is left out, so it logs no images/s instead of 0."""
  c = device_config(num_epochs=1, steps_per_dispatch=4, log_every_steps=4)
  trainer.train_and_evaluate(c, str(tmp_path))
  with open(os.path.join(tmp_path, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f if "train_loss" in line]
  assert [r["step"] for r in records] == [4, 8]
  assert "images_per_second" not in records[0] and "input_wait_fraction" not in records[0]
  assert records[1]["images_per_second"] > 0 and records[1]["input_wait_fraction"] >= 0


def test_device_run_with_bfloat16_compute_keeps_float32_state(tmp_path):
  c = device_config("small_cnn", num_epochs=1)
  c.model.options.dtype = "bfloat16"
  results = trainer.train_and_evaluate(c, str(tmp_path))
  assert results["last_step"] == 8 and np.isfinite(results["test_loss"])
  floats = float_leaves(results["state"])
  assert floats and all(x.dtype == np.float32 for x in floats)


def test_steps_per_dispatch_is_checked(tmp_path):
  with pytest.raises(ValueError, match="config.steps_per_dispatch must be >= 1, got 0"):
    trainer.train_and_evaluate(device_config(steps_per_dispatch=0), str(tmp_path))
