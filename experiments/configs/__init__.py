"""Training configurations (ml_collections); each file's docstring holds the command that runs it.
`check_settings` rejects values that cannot be run."""

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
