"""Config helpers shared by the training tests."""


def set_fields(config, overrides: dict, sep: str = "."):
  """Sets each `overrides` entry, keyed by its field path ("optim.name"), on `config`; returns it."""
  for path, value in overrides.items():
    node = config
    *parents, leaf = path.split(sep)
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config
