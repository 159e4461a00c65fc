"""Tests for experiments/report.py (and report_render.py, plots.py) on tiny real training runs."""

import base64
import html.parser
import json
import os
import re
import subprocess
import sys

import jax
import ml_collections
import numpy as np
from PIL import Image
import pytest

from experiments import report
from experiments import restore
from experiments import trainer
from helpers import tiny_runs

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  return tiny_runs.trained_runs(tmp_path_factory)


@pytest.fixture(scope="module")
def built(runs, tmp_path_factory):
  """`python -m experiments.report` over the float and the binary run."""
  out = str(tmp_path_factory.mktemp("report"))
  workdirs = ",".join(runs[m] for m in tiny_runs.MODELS)
  proc = subprocess.run([sys.executable, "-m", "experiments.report", f"--workdirs={workdirs}",
                         f"--out={out}"], cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return out


class _References(html.parser.HTMLParser):
  """Every src / href attribute of a page."""

  def __init__(self):
    super().__init__()
    self.refs = []

  def handle_starttag(self, tag, attrs):
    self.refs += [(tag, value) for name, value in attrs if name in ("src", "href") and value]


def test_every_artifact_exists_and_parses(built):
  expected = {report.HTML_FILE, report.MARKDOWN_FILE, report.JSON_FILE, *report.CURVE_FILES.values(),
              *[f"confusion_{m}.png" for m in tiny_runs.MODELS]}
  assert set(os.listdir(built)) == expected
  for name in expected:
    if name.endswith(".png"):
      with Image.open(os.path.join(built, name)) as png:
        png.verify()
  with open(os.path.join(built, report.JSON_FILE)) as f:
    data = json.load(f)
  assert [r["name"] for r in data["runs"]] == list(tiny_runs.MODELS)


def test_html_is_self_contained(built):
  with open(os.path.join(built, report.HTML_FILE)) as f:
    page = f.read()
  parser = _References()
  parser.feed(page)
  images = [value for tag, value in parser.refs if tag == "img"]
  assert len(images) == len(report.CURVE_FILES) + len(tiny_runs.MODELS)
  # Every reference is an embedded PNG: the page needs no other file.
  assert all(value.startswith("data:image/png;base64,") for _, value in parser.refs)
  for value in images:
    assert base64.b64decode(value.split(",", 1)[1]).startswith(PNG_SIGNATURE)


def test_markdown_references_only_files_that_exist(built):
  with open(os.path.join(built, report.MARKDOWN_FILE)) as f:
    text = f.read()
  targets = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text) + re.findall(r"(?<!!)\[[^\]]*\]\(([^)]+)\)", text)
  assert len(targets) == len(report.CURVE_FILES) + len(tiny_runs.MODELS)
  for target in targets:
    assert os.path.isfile(os.path.join(built, target)), target


def test_report_numbers_are_the_runs_numbers(built, runs):
  with open(os.path.join(built, report.JSON_FILE)) as f:
    data = json.load(f)
  with open(os.path.join(built, report.HTML_FILE)) as f:
    page = f.read()
  with open(os.path.join(built, report.MARKDOWN_FILE)) as f:
    markdown = f.read()
  for run in data["runs"]:
    workdir = runs[run["name"]]
    with open(os.path.join(workdir, trainer.RESULTS_FILE)) as f:
      results = json.load(f)
    e = run["evaluation"]
    # The evaluation is the trainer's test result of the checkpoint it selected.
    assert e["split"] == "test" and e["checkpoint"]["step"] == results["best_step"]
    assert e["accuracy"] == pytest.approx(results["test_accuracy"], abs=1e-12)
    assert np.sum(e["confusion_matrix"]) == tiny_runs.NUM_TEST
    for text in (page, markdown):
      assert f"{e['accuracy']:.4f}" in text and f"{e['macro_avg']['f1']:.4f}" in text
      for name, m in e["per_class"].items():
        assert name in text and f"{m['f1']:.4f}" in text
    # Summary: counts of the model the run's config builds.
    s = run["summary"]["totals"]
    model = trainer.create_model(restore.load_config(workdir), 0)
    params = trainer.split_model(model).params
    assert s["params"] == sum(np.size(x) for x in jax.tree.leaves(params))
    assert (s["binary_params"] > 0) == run["name"].startswith("bin_")
    assert f"{s['params']:,}" in page and f"{s['params']:,}" in markdown
    # The tiny runs completed: the table says so, with the selected checkpoint's logged accuracy.
    assert "| training | finished | finished |" in markdown
    assert f"{results['test_accuracy']:.4f}" in markdown
  # Configurations: the differing field, and each run's full config.
  assert "model.name" in page and page.count("config.json of") == len(tiny_runs.MODELS)


def test_curves_take_the_last_record_of_a_repeated_step():
  """A resumed run logs steps after its checkpoint again: the later record wins."""
  records = [{"step": 2, "epoch": 0.5, "train_loss": 3.0}, {"step": 4, "epoch": 1.0, "train_loss": 2.0},
             {"step": 4, "epoch": 1.0, "train_loss": 2.5}, {"step": 6, "epoch": 1.5, "train_loss": 1.0},
             {"step": 6, "epoch": 1.5, "val_accuracy": 0.5}]
  run = report.Run("r", "/r", None, records)
  x, y = run.curve("train_loss")
  assert x.tolist() == [0.5, 1.0, 1.5] and y.tolist() == [3.0, 2.5, 1.0]
  assert run.curve("val_accuracy")[1].tolist() == [0.5] and run.curve("test_loss")[0].size == 0
  assert run.last("train_loss") == 1.0 and run.last("missing") is None


def test_progress_says_whether_the_run_finished():
  """A report on a run under way (or interrupted) says how far it got, not that it ended."""
  config = ml_collections.ConfigDict({"num_epochs": 200, "num_train_steps": -1})
  records = [{"step": 351, "epoch": 1.0, "train_loss": 2.0},
             {"step": 351, "epoch": 1.0, "val_accuracy": 0.4, "test_accuracy": 0.41},
             {"step": 400, "epoch": 1.1396, "train_loss": 1.9}]
  run = report.Run("r", "/r", config, records)
  assert run.progress() == "unfinished: step 400, epoch 1.14 of 200 epochs"
  config.num_train_steps = 1000
  assert run.progress() == "unfinished: step 400 of 1000"
  run.records.append({"step": 1000, "final_test_accuracy": 0.5, "final_test_loss": 1.5})
  assert run.progress() == "finished"


def test_run_names_are_short_and_unique():
  assert report.run_names(["/a/runs/vgg16", "/a/runs/bin_vgg16"]) == ["vgg16", "bin_vgg16"]
  assert report.run_names(["/a/x/run", "/a/y/run"]) == ["x/run", "y/run"]
  assert report.file_stem("x/run") == "x_run"


# ---- Bad input ------------------------------------------------------------------------------------

def test_mismatched_class_counts_are_refused(runs, tmp_path):
  other = tiny_runs.copy_run(runs["small_cnn"], tmp_path / "five_classes", checkpoints=False)
  with open(os.path.join(other, "config.json")) as f:
    config = json.load(f)
  config["data"]["num_classes"] = 5
  with open(os.path.join(other, "config.json"), "w") as f:
    json.dump(config, f)
  with pytest.raises(ValueError, match=r"different numbers of classes.*: 10, five_classes: 5"):
    report.build_report([runs["bin_small_cnn"], other], str(tmp_path / "out"))
  assert not os.path.exists(tmp_path / "out")  # Refused before anything is written.


def test_missing_metrics_or_checkpoints_are_named(runs, tmp_path):
  no_metrics = tiny_runs.copy_run(runs["small_cnn"], tmp_path / "no_metrics")
  os.remove(os.path.join(no_metrics, "metrics.jsonl"))
  with pytest.raises(FileNotFoundError, match="no_metrics has no metrics.jsonl"):
    report.build_report([runs["bin_small_cnn"], no_metrics], str(tmp_path / "out"))
  no_ckpt = tiny_runs.copy_run(runs["small_cnn"], tmp_path / "no_ckpt", checkpoints=False)
  with pytest.raises(FileNotFoundError, match="no_ckpt has no checkpoint"):
    report.build_report([no_ckpt], str(tmp_path / "out"))


@pytest.mark.parametrize("kwargs,message", [
    (dict(split="tset"), "split must be one of test, validation, train"),
    (dict(checkpoint="newest"), "checkpoint must be one of best, latest"),
])
def test_unknown_split_or_checkpoint_is_refused(runs, tmp_path, kwargs, message):
  with pytest.raises(ValueError, match=message):
    report.build_report([runs["small_cnn"]], str(tmp_path / "out"), **kwargs)


def test_empty_or_repeated_workdirs_are_refused(runs, tmp_path):
  with pytest.raises(ValueError, match="workdirs is empty"):
    report.load_runs([])
  with pytest.raises(ValueError, match="lists a directory twice"):
    report.load_runs([runs["small_cnn"], runs["small_cnn"] + "/"])


def test_command_line_error_is_one_clear_line(tmp_path):
  os.makedirs(tmp_path / "empty")
  proc = subprocess.run([sys.executable, "-m", "experiments.report",
                         f"--workdirs={tmp_path / 'empty'}", f"--out={tmp_path / 'out'}"],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1 and "Traceback" not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith("error: FileNotFoundError: workdir")
  assert "has no config.json" in proc.stderr
