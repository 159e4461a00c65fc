"""Config helpers shared by the training tests."""

from experiments import configs
from experiments.configs import default

# A run that trains in seconds: synthetic 10-class data, a quarter-width model, Adam, 2 epochs.
TINY = {"data.source": "synthetic", "batch_size": 32, "model.options.width": 0.25, "num_epochs": 2,
        "optim.name": "adam", "optim.learning_rate": 0.01, "optim.warmup_epochs": 0.5}


def set_fields(config, overrides: dict, sep: str = "."):
  """Sets each `overrides` entry, keyed by its field path ("optim.name", parts joined by `sep`), on
  `config` (experiments.configs.set_field: a field the config lacks is an error); returns it."""
  for path, value in overrides.items():
    configs.set_field(config, ".".join(path.split(sep)), value, argument="test overrides")
  return config


def tiny_config(model: str, overrides: dict):
  """`model`'s default config with the `TINY` settings, then `overrides` (field path -> value)."""
  return set_fields(default.get_config(model), {**TINY, **overrides})
