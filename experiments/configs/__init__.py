"""Training configurations (ml_collections); each file's docstring holds the command that runs it.
`preset` loads one by model name, `with_overrides` sets "field=value" items on it and
`check_settings` rejects values that cannot be run."""

import importlib
import json
from typing import Sequence

# Fields that are -1 (meaning "automatic", see default.py) or a positive count.
_AUTO_OR_POSITIVE = ("eval_every_steps", "checkpoint_every_steps", "num_devices")


def check_settings(config):
  """Raises ValueError naming the first schedule or optimiser setting that cannot be run (a count
  of zero, a negative rate); the trainer checks batch sizes, epochs and names."""
  for field in _AUTO_OR_POSITIVE:
    value = config[field]
    if value != -1 and value < 1:
      raise ValueError(f"config.{field}={value!r} must be -1 (automatic) or >= 1")
  if config.keep_checkpoints < 1:
    raise ValueError(f"config.keep_checkpoints={config.keep_checkpoints!r} must be >= 1")
  if not config.optim.learning_rate > 0:
    raise ValueError(f"config.optim.learning_rate={config.optim.learning_rate!r} must be > 0")
  if not config.optim.warmup_epochs >= 0:
    raise ValueError(f"config.optim.warmup_epochs={config.optim.warmup_epochs!r} must be >= 0")


def flat_fields(fields: dict, prefix: str = "") -> dict:
  """A nested dict of config fields (`ConfigDict.to_dict()`, or its JSON) as {"optim.name": ...}."""
  out = {}
  for key, value in fields.items():
    if isinstance(value, dict):
      out.update(flat_fields(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def preset(model: str):
  """The configuration of `model`: its preset (experiments/configs/<model>.py), else the defaults
  with that model, as `python -m experiments.train --model=<model>` loads it. ValueError naming
  the known models for an unknown one."""
  from experiments.configs import default  # pylint: disable=g-import-not-at-top (imports this)
  from xnorjax import models  # pylint: disable=g-import-not-at-top
  if model.isidentifier() and not model.startswith("_") and model != "default":
    try:
      return importlib.import_module(f"experiments.configs.{model}").get_config()
    except ModuleNotFoundError as e:
      if e.name != f"experiments.configs.{model}":
        raise
  models.get_model_fn(model)
  return default.get_config(model)


def set_field(config, path: str, value, *, argument: str = "overrides", item: str | None = None):
  """Sets the field at the dotted `path` of `config` to `value`. ValueError naming `argument` and
  `item` (default: the path) when the config has no such field."""
  names = path.split(".")
  node = config
  for depth, name in enumerate(names):
    if not hasattr(node, "keys") or name not in node:
      raise ValueError(f"{argument}: {item or path!r}: the config has no field "
                       f"{'.'.join(names[:depth + 1])!r}")
    if depth < len(names) - 1:
      node = node[name]
  node[names[-1]] = value


def with_overrides(config, items: Sequence[str], *, argument: str = "overrides"):
  """`config` with each "field.path=value" of `items` set; values are parsed as JSON (numbers,
  true / false, lists), else taken as strings. ValueError naming `argument` and the item for a
  malformed item or a field the config does not have."""
  for item in items:
    key, sep, text = item.partition("=")
    if not sep or not key:
      raise ValueError(f"{argument}: {item!r} is not field=value")
    try:
      value = json.loads(text)
    except json.JSONDecodeError:
      value = text
    set_field(config, key, value, argument=argument, item=item)
  return config
