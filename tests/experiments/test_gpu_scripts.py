"""experiments/gpu/run.sh, checked without a GPU (ALLOW_CPU=1) on a tiny synthetic run: its flags
reach the trainer and its summary line reports what the run did. And carried_wheels.sh, which both
GPU scripts use on a machine without network: it installs a carried wheel only for a missing module."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ("--config.data.source=synthetic --config.data.synthetic_train_size=256 "
        "--config.data.synthetic_test_size=64 --config.data.num_validation=64 "
        "--config.model.options.width=0.25 --config.tensorboard=False")


@pytest.mark.skipif(sys.platform != "linux", reason="bash script")
def test_gpu_run_trains_and_summarises(tmp_path):
  env = dict(os.environ, PYTHON=sys.executable, ALLOW_CPU="1", MODELS="bin_small_cnn",
             EPOCHS_BIN_SMALL_CNN="2", BATCH_SIZE="32", BUDGET_S="300", EXTRA_FLAGS=TINY)
  env.pop("XNORJAX_CIFAR10_JPEG", None)
  proc = subprocess.run(["bash", "experiments/gpu/run.sh", str(tmp_path)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert "=== bin_small_cnn: 2 epochs, batch 32" in proc.stdout
  summaries = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
  assert len(summaries) == 1, proc.stdout
  s = summaries[0]
  assert s["model"] == "bin_small_cnn" and s["exit_status"] == 0
  assert s["steps"] == 12  # 2 epochs of (256 - 64) / 32 steps
  assert s["interrupted_by"] is None
  assert 0.0 <= s["test_accuracy"] <= 1.0 and 0.0 <= s["best_val_accuracy"] <= 1.0
  assert s["median_train_images_per_second"] > 0
  assert s["seconds"]["loop"] >= s["seconds"]["training"] > 0
  with open(tmp_path / "bin_small_cnn" / "config.json") as f:
    config = json.load(f)
  assert config["num_epochs"] == 2 and config["batch_size"] == 32
  assert config["eval_test_during_training"] is False


def test_gpu_run_refuses_a_machine_without_gpu(tmp_path):
  env = dict(os.environ, PYTHON=sys.executable, MODELS="bin_small_cnn")
  env.pop("ALLOW_CPU", None)
  proc = subprocess.run(["bash", "experiments/gpu/run.sh", str(tmp_path)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode != 0
  assert "no GPU visible to jax" in proc.stdout + proc.stderr


def test_gpu_run_reports_a_run_that_never_started(tmp_path):
  env = dict(os.environ, PYTHON=sys.executable, ALLOW_CPU="1", MODELS="small_cnn",
             EXTRA_FLAGS="--config.no_such_option=1")
  proc = subprocess.run(["bash", "experiments/gpu/run.sh", str(tmp_path)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=120, check=False)
  assert 'no field "no_such_option"' in proc.stdout
  summaries = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
  assert len(summaries) == 1, proc.stdout + proc.stderr
  assert summaries[0]["exit_status"] != 0 and summaries[0]["test_accuracy"] is None


def _write_wheel(directory, name):
  """A minimal pure-Python wheel of one module `name` whose `VALUE` is 7."""
  import zipfile
  info = f"{name}-1.0.dist-info"
  files = {f"{name}.py": "VALUE = 7\n",
           f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
           f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
  files[f"{info}/RECORD"] = "".join(f"{path},,\n" for path in [*files, f"{info}/RECORD"])
  path = directory / f"{name}-1.0-py3-none-any.whl"
  with zipfile.ZipFile(path, "w") as z:
    for arcname, text in files.items():
      z.writestr(arcname, text)
  return path


@pytest.mark.skipif(sys.platform != "linux", reason="bash script")
def test_carried_wheels_install_only_what_is_missing(tmp_path):
  wheels = tmp_path / "wheels"
  wheels.mkdir()
  _write_wheel(wheels, "xnorjax_carried_probe")
  _write_wheel(wheels, "json")  # the machine has json: its wheel must not be installed
  site = tmp_path / "site"
  script = ("source experiments/gpu/carried_wheels.sh && install_carried_wheels \"$PY\" "
            "xnorjax_carried_probe:xnorjax_carried_probe json:json && "
            "\"$PY\" -c 'import json, xnorjax_carried_probe as m; print(m.VALUE, json.__file__)'")
  env = dict(os.environ, PY=sys.executable, WHEEL_DIR=str(wheels), CARRIED_SITE=str(site))
  proc = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=120, check=False)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  value, json_file = proc.stdout.splitlines()[-1].split()
  assert value == "7"
  assert not json_file.startswith(str(site))  # the standard library's json, not the carried one
  assert sorted(p.name for p in site.iterdir() if p.suffix == ".py") == ["xnorjax_carried_probe.py"]


def test_gpu_check_smoke_runs_every_path_exactly_on_the_host_emulation(tmp_path):
  """experiments/gpu/check.py --smoke without a GPU: every path and output kind of the CUDA
  module's host emulation on small shapes, checked against XLA, then timed; its report is written."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-m", "experiments.gpu.check", "--smoke",
                         f"--out={tmp_path}", "--budget_s=120"], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  with open(tmp_path / "gpu_check.json") as f:
    report = json.load(f)
  cases = report["exactness"]
  assert cases and all(c["exact"] and c["mismatches"] == 0 for c in cases), cases
  assert {c["path"] for c in cases} >= {"simple", "mma"}
  assert report["timing"] and all(row.get("xnor_packed_exact") for row in report["timing"])
  assert (tmp_path / "gpu_check.txt").read_text().strip()
