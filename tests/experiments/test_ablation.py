"""experiments/ablation.py: each method's config differs from the base in its one respect; a tiny
synthetic ablation trains every row, writes the table, and a rerun re-reads it without training."""

import json
import os
import subprocess
import sys

import pytest

from experiments import ablation
from experiments import configs

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["data.source=synthetic", "data.synthetic_train_size=192", "data.synthetic_test_size=64",
        "data.num_validation=64", "batch_size=32", "eval_batch_size=64", "model.options.width=0.25",
        "optim.warmup_epochs=0", "tensorboard=false", "log_every_steps=2",
        "eval_test_during_training=false"]


def _differences(a, b):
  flat_a, flat_b = configs.flat_fields(a.to_dict()), configs.flat_fields(b.to_dict())
  return {k for k in flat_a.keys() | flat_b.keys() if flat_a.get(k) != flat_b.get(k)}


@pytest.mark.parametrize("method, changed", [
    ("bop", {"optim.binary_optimizer"}), ("distill", {"distill.teacher_workdir"}),
    ("two_stage", {"two_stage", "num_epochs"}),
    ("reactnet", {"model.name", "model.options.binarize_first_layer",
                  "model.options.binarize_last_layer"})])
def test_each_method_changes_only_its_own_fields(method, changed):
  baseline = ablation.run_config("baseline", "bin_resnet18", 4, 1, [])
  other = ablation.run_config(method, "bin_resnet18", 4, 1, [], teacher_workdir="/t")
  assert _differences(baseline, other) == changed
  assert baseline.seed == 1 and baseline.num_epochs == 4
  assert other.num_epochs == (2 if method == "two_stage" else 4)  # the same epochs in all


@pytest.mark.parametrize("call, message", [
    (lambda: ablation.parse_seeds(["0", "x"]), "--seeds: '0,x' is not a list of integers"),
    (lambda: ablation.parse_seeds(["1", "1"]), "must name one or more different seeds"),
    (lambda: ablation.check_methods(["bop", "magic"]), "--methods: magic: choose from baseline"),
    (lambda: ablation.run_config("baseline", "bin_vgg16", 0, 0, []), "--epochs=0 must be > 0"),
    (lambda: ablation.run_config("baseline", "bin_vgg16", 1, 0, ["optim.nope=1"]),
     "--config_overrides: 'optim.nope=1': the config has no field 'optim.nope'"),
    (lambda: ablation.run_config("baseline", "resnet50", 1, 0, []), "unknown model 'resnet50'"),
    (lambda: ablation.run_config("baseline", "__init__", 1, 0, []), "unknown model '__init__'"),
    (lambda: ablation.run_config("baseline", "a.b", 1, 0, []), "unknown model 'a.b'"),
])
def test_bad_arguments_are_one_clear_error(call, message):
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
    call()


def test_tiny_ablation_trains_every_row_and_a_rerun_rereads_it(tmp_path):
  workdir = tmp_path / "ablation"
  command = [sys.executable, "-m", "experiments.ablation", f"--workdir={workdir}",
             "--base=bin_small_cnn", "--teacher=small_cnn", "--epochs=2", "--seeds=0,1",
             "--methods=baseline,bop,distill,two_stage", f"--config_overrides={','.join(TINY)}"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]
  with open(workdir / ablation.RUNS_FILE) as f:
    runs = json.load(f)
  assert [(r["method"], r["seed"]) for r in runs] == [
      (m, s) for m in ("baseline", "bop", "distill", "two_stage") for s in (0, 1)]
  steps_per_epoch = (192 - 64) // 32
  for r in runs:
    assert r["interrupted_by"] is None and 0 <= r["test_accuracy"] <= 1 and r["wall_seconds"] > 0
    assert r["last_step"] == 2 * steps_per_epoch // (2 if r["method"] == "two_stage" else 1)
  assert os.path.isfile(workdir / "teacher" / "results.json")
  assert os.path.isfile(workdir / "two_stage" / "seed0" / "stage2" / "results.json")
  table = (workdir / ablation.TABLE_FILE).read_text()
  assert table == done.stdout and "(so far)" not in table
  assert table.count("\n| ") == 1 + 4  # the header and one row per method
  by_method = {r["method"]: r for r in ablation.summarize(runs, ablation.METHODS, [0, 1])}
  assert by_method["bop"]["spread"] == pytest.approx(
      abs(runs[2]["test_accuracy"] - runs[3]["test_accuracy"]))

  again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert again.returncode == 0, again.stderr[-3000:]
  # Every run (8, the two-stage ones twice, and the teacher) resumed at its last step: nothing
  # trained again, the same accuracies re-read.
  assert again.stderr.count("Resumed from") == 11, again.stderr[-3000:]
  strip_wall = lambda t: [line.rsplit("|", 2)[0] for line in t.splitlines()[4:]]
  assert strip_wall(again.stdout) == strip_wall(table)
