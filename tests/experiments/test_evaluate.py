"""Tests for experiments/evaluate.py and experiments/restore.py on tiny real training runs."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
from PIL import Image
import pytest

from experiments import evaluate
from experiments import input_pipeline
from experiments import restore
from experiments import trainer
from helpers import tiny_runs

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  return tiny_runs.trained_runs(tmp_path_factory)


@pytest.fixture(scope="module")
def evaluated(runs):
  """`python -m experiments.evaluate` on the binary run (default: test split, best checkpoint)."""
  workdir = runs["bin_small_cnn"]
  proc = subprocess.run([sys.executable, "-m", "experiments.evaluate", f"--workdir={workdir}"],
                        cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir, proc.stdout


def _load(workdir, name):
  with open(os.path.join(workdir, name)) as f:
    return json.load(f)


def _per_class_by_hand(labels, predictions, num_classes):
  """Precision, recall, F1, support per class from counting (no scikit-learn)."""
  out = []
  for c in range(num_classes):
    tp = int(np.sum((predictions == c) & (labels == c)))
    predicted, actual = int(np.sum(predictions == c)), int(np.sum(labels == c))
    p = tp / predicted if predicted else 0.0
    r = tp / actual if actual else 0.0
    out.append((p, r, 2 * p * r / (p + r) if p + r else 0.0, actual))
  return out


def test_artifacts_exist_parse_and_agree(evaluated):
  workdir, stdout = evaluated
  out = os.path.join(workdir, "evaluation", "test")
  assert sorted(os.listdir(out)) == sorted([evaluate.METRICS_JSON, evaluate.REPORT_TXT,
                                            evaluate.CONFUSION_PNG, evaluate.PREDICTIONS_NPZ])
  m = _load(out, evaluate.METRICS_JSON)
  results = _load(workdir, trainer.RESULTS_FILE)
  config = restore.load_config(workdir)
  data = input_pipeline.load_data(config.data, seed=config.seed)

  # The confusion matrix counts every test example once; its trace / N is the accuracy.
  counts = np.array(m["confusion_matrix"])
  assert counts.shape == (10, 10) and counts.sum() == m["num_examples"] == tiny_runs.NUM_TEST
  assert m["accuracy"] == pytest.approx(np.trace(counts) / m["num_examples"], abs=1e-12)
  # The same checkpoint and numbers as the trainer's own evaluation (trainer.eval_step) at the end.
  assert m["checkpoint"]["kind"] == "best" and m["checkpoint"]["step"] == results["best_step"]
  assert m["accuracy"] == pytest.approx(results["test_accuracy"], abs=1e-12)
  assert m["loss"] == pytest.approx(results["test_loss"], rel=1e-5)
  # Row-normalised: each row divided by its total.
  np.testing.assert_allclose(m["confusion_matrix_normalized"],
                             counts / counts.sum(axis=1, keepdims=True), atol=1e-12)

  # Per-class numbers against counting from the saved predictions; the labels are the test split's.
  saved = np.load(os.path.join(out, evaluate.PREDICTIONS_NPZ))
  np.testing.assert_array_equal(saved["labels"], data.test.labels)
  np.testing.assert_array_equal(saved["predictions"], saved["logits"].argmax(-1))
  assert saved["logits"].shape == (tiny_runs.NUM_TEST, 10)
  hand = _per_class_by_hand(saved["labels"], saved["predictions"], 10)
  assert list(m["per_class"]) == list(data.class_names) == m["class_names"]
  for (p, r, f, s), name in zip(hand, data.class_names):
    got = m["per_class"][name]
    assert (got["precision"], got["recall"], got["f1"], got["support"]) == pytest.approx((p, r, f, s))
  assert m["macro_avg"]["f1"] == pytest.approx(np.mean([h[2] for h in hand]))
  supports = np.array([h[3] for h in hand])
  assert m["weighted_avg"]["recall"] == pytest.approx(m["accuracy"])  # support-weighted recall
  assert m["weighted_avg"]["precision"] == pytest.approx(
      np.dot([h[0] for h in hand], supports) / supports.sum())
  assert np.sum(counts, axis=0).tolist() == np.bincount(saved["predictions"], minlength=10).tolist()

  # Human-readable outputs.
  with open(os.path.join(out, evaluate.REPORT_TXT)) as f:
    text = f.read()
  assert f"accuracy {m['accuracy']:.4f}" in text and "macro avg" in text and "weighted avg" in text
  assert all(name in text for name in data.class_names)
  assert text.strip() in stdout
  with Image.open(os.path.join(out, evaluate.CONFUSION_PNG)) as png:
    assert png.format == "PNG" and png.size[0] > 600 and png.size[1] > 300


def test_validation_split_reproduces_the_logged_best_validation_accuracy(runs):
  workdir = runs["small_cnn"]
  e = evaluate.evaluate_workdir(workdir, split="validation", batch_size=48)
  records = restore.read_metrics(workdir)
  best = max((r for r in records if "val_accuracy" in r), key=lambda r: r["val_accuracy"])
  assert e.metrics["num_examples"] == tiny_runs.NUM_VALIDATION
  assert e.metrics["accuracy"] == pytest.approx(best["val_accuracy"], abs=1e-12)
  assert e.loss == pytest.approx(best["val_loss"], rel=1e-5)
  assert e.step == _load(workdir, trainer.RESULTS_FILE)["best_step"]


def test_latest_checkpoint_is_the_last_step(runs):
  e = evaluate.evaluate_workdir(runs["small_cnn"], split="test", checkpoint="latest")
  assert (e.checkpoint, e.step) == ("latest", _load(runs["small_cnn"], trainer.RESULTS_FILE)["last_step"])
  assert e.metrics["accuracy"] == pytest.approx(
      _load(runs["small_cnn"], trainer.RESULTS_FILE)["test_accuracy_last"], abs=1e-12)


def test_classification_metrics_with_an_absent_class(rng):
  """Random labels and predictions over 6 classes, class 4 never appearing in either."""
  names = [f"c{i}" for i in range(6)]
  labels = rng.choice([0, 1, 2, 3, 5], size=200)
  predictions = np.where(rng.random(200) < 0.6, labels, rng.choice([0, 1, 2, 3, 5], size=200))
  m = evaluate.classification_metrics(labels, predictions, names)
  counts = np.array(m["confusion_matrix"])
  assert counts.sum() == 200 and counts[4].sum() == 0 and counts[:, 4].sum() == 0
  assert m["accuracy"] == pytest.approx(np.mean(labels == predictions))
  for (p, r, f, s), name in zip(_per_class_by_hand(labels, predictions, 6), names):
    got = m["per_class"][name]
    assert (got["precision"], got["recall"], got["f1"], got["support"]) == pytest.approx((p, r, f, s))
  assert m["confusion_matrix_normalized"][4] == [0.0] * 6  # no examples: a zero row, not NaN


# ---- Bad input ------------------------------------------------------------------------------------

def test_missing_or_empty_work_directories_are_named(runs, tmp_path):
  with pytest.raises(FileNotFoundError, match="is not a directory"):
    evaluate.evaluate_workdir(str(tmp_path / "nowhere"))
  os.makedirs(tmp_path / "empty")
  with pytest.raises(FileNotFoundError, match="has no config.json"):
    evaluate.evaluate_workdir(str(tmp_path / "empty"))
  no_ckpt = tiny_runs.copy_run(runs["small_cnn"], tmp_path / "no_ckpt", checkpoints=False)
  with pytest.raises(FileNotFoundError, match="has no checkpoint"):
    evaluate.evaluate_workdir(no_ckpt)
  os.remove(os.path.join(no_ckpt, "metrics.jsonl"))
  with pytest.raises(FileNotFoundError, match="has no metrics.jsonl"):
    restore.read_metrics(no_ckpt)
  with open(os.path.join(no_ckpt, "metrics.jsonl"), "w") as f:
    f.write('{"step": 1, "train_loss": 2.0}\n{"step": 2, "train_loss"\n')
  with pytest.raises(ValueError, match="line 2: not valid JSON"):
    restore.read_metrics(no_ckpt)


def test_unknown_split_and_checkpoint_are_refused(runs):
  with pytest.raises(ValueError, match="split must be one of test, validation, train, got 'tset'"):
    evaluate.evaluate_workdir(runs["small_cnn"], split="tset")
  with pytest.raises(ValueError, match="checkpoint must be one of best, latest"):
    restore.restore_model(runs["small_cnn"], checkpoint="newest")


def test_missing_validation_split_is_explained(runs, tmp_path):
  workdir = tiny_runs.copy_run(runs["small_cnn"], tmp_path / "run")
  config = _load(workdir, "config.json")
  config["data"]["num_validation"] = 0
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(config, f)
  with pytest.raises(ValueError, match="trained without a validation hold-out"):
    evaluate.evaluate_workdir(workdir, split="validation")


def test_config_that_does_not_match_the_checkpoint_is_refused(runs, tmp_path):
  workdir = tiny_runs.copy_run(runs["bin_small_cnn"], tmp_path / "run")
  config = _load(workdir, "config.json")
  config["model"]["options"]["width"] = 0.5
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(config, f)
  with pytest.raises(ValueError, match="has shape .* the model built from config.json expects"):
    restore.restore_model(workdir)


def test_command_line_errors_are_one_clear_line(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "experiments.evaluate", f"--workdir={tmp_path}"],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1].startswith("error: FileNotFoundError: workdir")
  assert "Traceback" not in proc.stderr


def test_shape_check_skips_prng_keys_and_names_mismatches():
  """RNG state (typed keys) is saved as raw uint32 data; a wrong weight shape is refused by name."""
  target = {"rest": {"dropout": {"key": jax.random.key(0)}}, "params": {"w": np.zeros((3, 4))}}
  saved = {"rest": {"dropout": {"key": jax.ShapeDtypeStruct((2,), np.uint32)}},
           "params": {"w": jax.ShapeDtypeStruct((3, 4), np.float32)}}
  restore._check_shapes(target, saved, "ckpt")  # pylint: disable=protected-access
  saved["params"]["w"] = jax.ShapeDtypeStruct((3, 5), np.float32)
  with pytest.raises(ValueError, match=r"ckpt: params.w has shape \(3, 5\), .* expects \(3, 4\)"):
    restore._check_shapes(target, saved, "ckpt")  # pylint: disable=protected-access
  del saved["params"]["w"]
  with pytest.raises(ValueError, match="lacks 1 variable.*params.w"):
    restore._check_shapes(target, saved, "ckpt")  # pylint: disable=protected-access
