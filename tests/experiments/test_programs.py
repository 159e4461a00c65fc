"""Every command-line program starts: `python -m experiments.<program> --help` prints its usage.

The programs' `__main__` blocks (the huge-page restart, flag definitions, imports) run nowhere
else in the suite for the benchmarks; this catches a broken import or flag before a user does.
"""

import os
import subprocess
import sys

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ABSL_PROGRAMS = ["train", "evaluate", "export", "report", "ablation", "bench.train", "bench.conv_policy",
                 "bench.profile_step", "bench.device_data"]
ARGPARSE_PROGRAMS = ["bench.kernels", "bench.deploy", "bench.conv_formulations", "gpu.check"]
STARTUP_NOISE = ("Unable to initialize backend 'tpu'", "Platform 'tpu' is experimental",
                 "TF_ENABLE_ONEDNN_OPTS", "oneDNN custom operations")


@pytest.mark.parametrize("program", ABSL_PROGRAMS + ARGPARSE_PROGRAMS)
def test_program_prints_its_usage(program):
  done = subprocess.run([sys.executable, "-m", f"experiments.{program}", "--help"], cwd=_ROOT,
                        capture_output=True, text=True, timeout=300, check=False)
  assert "Traceback" not in done.stderr, done.stderr[-2000:]
  for noise in STARTUP_NOISE:  # experiments.cli keeps these out of every command's output
    assert noise not in done.stderr + done.stdout, done.stderr[-2000:]
  if program in ABSL_PROGRAMS:  # absl prints the docstring and the flags, then exits with 1
    assert done.returncode in (0, 1) and "Try --helpfull" in done.stdout, done.stdout[-2000:]
  else:
    assert done.returncode == 0 and done.stdout.startswith("usage:"), done.stdout[-2000:]


@pytest.mark.parametrize("args, message", [
    (["--variants=rgb:fft"], "--variants: 'rgb:fft' is not class:formulation"),
    (["--models=resnet50"], "--models: 'resnet50' is not one of vgg16, bin_vgg16"),
    (["--rounds=0"], "--steps, --rounds and --batch_size must be positive"),
])
def test_bench_conv_policy_rejects_bad_flags(args, message):
  done = subprocess.run([sys.executable, "-m", "experiments.bench.conv_policy", *args],
                        cwd=_ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode != 0 and "Traceback" not in done.stderr
  assert message in done.stderr, done.stderr[-2000:]


def test_the_experiments_modules_import_together():
  """Flags a module defines at import time must not clash with another's (tests and notebooks
  import several); programs whose flags share names define them only when run (`define_flags`).
  pytorch_baseline is left out: it runs in a separate PyTorch environment."""
  names = sorted(f"{room}{n[:-3]}" for room in ("", "bench.", "gpu.")
                 for n in os.listdir(os.path.join(_ROOT, "experiments", *room.split(".")[:-1]))
                 if n.endswith(".py") and n not in ("__init__.py", "pytorch_baseline.py"))
  assert {"train", "bench.train", "bench.conv_policy", "bench.profile_step",
          "gpu.check"} <= set(names)
  code = "".join(f"import experiments.{n}\n" for n in names) + "print('imported')"
  done = subprocess.run([sys.executable, "-c", code], cwd=_ROOT, capture_output=True, text=True,
                        timeout=300, check=False)
  assert done.returncode == 0 and done.stdout.strip() == "imported", done.stderr[-2000:]


def test_profile_step_rejects_an_unknown_model():
  done = subprocess.run([sys.executable, "-m", "experiments.bench.profile_step", "--model=resnet50"],
                        cwd=_ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode != 0 and "Traceback" not in done.stderr
  assert "unknown model 'resnet50'; known models: vgg16" in done.stderr, done.stderr[-2000:]
