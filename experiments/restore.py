"""Reading back a training work directory: its config, its metrics and a checkpoint as a model.

What `experiments.train` writes (experiments/trainer.py, checkpointing.py, metrics.py) is read here
for evaluation and reports, with clear errors when something is missing:

  load_config(workdir)     config.json -> ml_collections.ConfigDict
  read_metrics(workdir)    metrics.jsonl -> [{"step": ..., <name>: value}, ...]
  restore_model(workdir)   the selected checkpoint (best on validation; else the latest) as an
                           eval-mode model, restoring only the parameters and BatchNorm statistics
                           (orbax partial restore; the optimiser state stays on disk).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

from absl import logging
from flax import nnx
import jax
import ml_collections
import orbax.checkpoint as ocp

from experiments import checkpointing
from experiments import metrics as metrics_lib
from experiments import trainer

CHECKPOINTS = ("best", "latest")


def _check_workdir(workdir: str) -> str:
  if not workdir or not os.path.isdir(workdir):
    raise FileNotFoundError(f"workdir {workdir!r} is not a directory (expected the --workdir of a "
                            "training run)")
  return os.path.abspath(workdir)


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The training configuration saved in <workdir>/config.json."""
  workdir = _check_workdir(workdir)
  path = os.path.join(workdir, trainer.CONFIG_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"workdir {workdir} has no {trainer.CONFIG_FILE}: it is not the work "
                            "directory of a training run (python -m experiments.train writes it)")
  try:
    with open(path, encoding="utf-8") as f:
      config = ml_collections.ConfigDict(json.load(f))
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} is not valid JSON: {e}") from e
  for field in ("model", "data", "seed"):
    if field not in config:
      raise ValueError(f"{path} has no {field!r} field: not a training configuration")
  return config


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """The records of <workdir>/metrics.jsonl in file order (a resumed run appends to the file)."""
  workdir = _check_workdir(workdir)
  path = os.path.join(workdir, metrics_lib.METRICS_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"workdir {workdir} has no {metrics_lib.METRICS_FILE}: training has not "
                            "logged anything there yet")
  records = []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}, line {number}: not valid JSON ({e})") from e
      if not isinstance(record, dict) or "step" not in record:
        raise ValueError(f"{path}, line {number}: expected an object with a 'step', got {line[:80]!r}")
      records.append(record)
  if not records:
    raise ValueError(f"{path} is empty: training has not logged anything yet")
  return records


@dataclasses.dataclass
class RestoredModel:
  """A model in eval mode with the weights of checkpoint `step` from `directory`."""
  model: nnx.Module
  config: ml_collections.ConfigDict
  checkpoint: str      # "best" (selected on validation accuracy) or "latest"
  step: int
  directory: str
  record: dict         # the checkpoint's JSON record (epoch, best validation accuracy, ...)


def _flat_shapes(tree) -> dict[str, tuple]:
  """{dotted path: shape}, PRNG keys left out (stored as raw uint32 data of another shape)."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {".".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path):
          tuple(getattr(leaf, "shape", ())) for path, leaf in leaves
          if not _is_key(leaf)}


def _is_key(leaf) -> bool:
  dtype = getattr(leaf, "dtype", None)
  return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _check_shapes(target, saved, where: str):
  """Orbax pads or truncates arrays restored into other shapes: refuse instead."""
  want, have = _flat_shapes(target), _flat_shapes(saved)
  missing = sorted(set(want) - set(have))
  if missing:
    raise checkpointing.ModelMismatchError(
        f"checkpoint {where} lacks {len(missing)} variable(s) of the model, e.g. {missing[0]}: "
        "config.json and the checkpoint describe different models")
  wrong = [(k, want[k], have[k]) for k in want if want[k] != have[k]]
  if wrong:
    k, w, h = wrong[0]
    raise checkpointing.ModelMismatchError(
        f"checkpoint {where}: {k} has shape {h}, the model built from config.json expects {w} "
        f"({len(wrong)} mismatched variable(s))")


def _restore_step(manager, step: int, target, where: str):
  """(params, rest, record) of checkpoint `step`: a partial restore (no optimiser state)."""
  _check_shapes(target, manager.item_metadata(step)["state"], where)
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.PyTreeRestore(
          abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
          partial_restore=True),
      record=ocp.args.JsonRestore()))
  return restored.state["params"], restored.state["rest"], dict(restored.record or {})


def _open_manager(directory: str, kind: str):
  best_options = dict(best_fn=lambda m: m["val_accuracy"], best_mode="max") if kind == "best" else {}
  return ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(create=False, read_only=True,
                                                      **best_options),
      item_handlers={"state": ocp.PyTreeCheckpointHandler(), "record": ocp.JsonCheckpointHandler()})


def _candidate_steps(manager, kind: str, finished: list[int]) -> list[int]:
  """The steps to try, preferred first: the best one (if its metrics read) or all, newest first."""
  if kind == "latest":
    return finished
  try:
    best = manager.best_step()
  except Exception as e:  # pylint: disable=broad-except  # unreadable metrics: use the latest
    logging.warning("The best checkpoint in %s is unreadable (%s); using the latest checkpoint",
                    manager.directory, checkpointing.brief(e))
    return []
  return [best] if best in finished else []


def restore_model(workdir: str, checkpoint: str = "best",
                  config: Optional[ml_collections.ConfigDict] = None) -> RestoredModel:
  """The model of `workdir` with the weights of its best (on validation) or latest checkpoint.

  checkpoint="best" falls back to the latest checkpoint when the run has no best one (training
  without a validation split) or it is unreadable; an unreadable or unfinished checkpoint newer
  than the one used is skipped with one warning naming its directory (nothing is changed on
  disk); the result says which was used. UnreadableCheckpointError when none is readable.
  """
  if checkpoint not in CHECKPOINTS:
    raise ValueError(f"checkpoint must be one of {', '.join(CHECKPOINTS)}, got {checkpoint!r}")
  workdir = _check_workdir(workdir)
  config = load_config(workdir) if config is None else config
  candidates = [("best", checkpointing.BEST_DIR)] if checkpoint == "best" else []
  candidates.append(("latest", checkpointing.LATEST_DIR))
  parts = None
  for kind, name in candidates:
    directory = os.path.join(workdir, name)
    if not os.path.isdir(directory):
      continue
    finished, unfinished = checkpointing.scan(directory)
    try:
      manager = _open_manager(directory, kind)
    except Exception as e:  # pylint: disable=broad-except  # best/: orbax reads all metrics
      if kind == "latest":
        raise
      logging.warning("The best checkpoint in %s is unreadable (%s); using the latest checkpoint",
                      directory, checkpointing.brief(e))
      continue
    try:
      steps = _candidate_steps(manager, kind, finished)
      if not steps and kind == "best":
        for _, path in unfinished:
          logging.warning("The best checkpoint %s is unfinished (an interrupted save or partial "
                          "copy); using the latest checkpoint", path)
        continue
      if parts is None:
        parts = trainer.split_model(trainer.create_model(config, config.seed))
      target = {"params": parts.params, "rest": parts.rest}
      step, restored, failures = checkpointing.restore_newest_readable(
          directory, steps,
          lambda s: _restore_step(manager, s, target, os.path.join(directory, str(s))))
    except checkpointing.UnreadableCheckpointError as e:
      if kind == "best":
        logging.warning("%s; using the latest checkpoint", e)
        continue
      raise
    finally:
      manager.close()
    if step is None:
      continue
    for _, path, reason in failures:
      logging.warning("Checkpoint %s is unreadable (%s); using step %d instead", path, reason, step)
    for bad_step, path in unfinished:
      if bad_step > step:
        logging.warning("Checkpoint %s is unfinished (an interrupted save or partial copy); "
                        "using step %d instead", path, step)
    params, rest, record = restored
    model = nnx.merge(parts.eval_graphdef, params, rest)
    return RestoredModel(model, config, kind, int(step), os.path.join(directory, str(step)), record)
  raise FileNotFoundError(
      f"workdir {workdir} has no checkpoint in {checkpointing.BEST_DIR}/ or "
      f"{checkpointing.LATEST_DIR}/: train first (python -m experiments.train --workdir=...)")
