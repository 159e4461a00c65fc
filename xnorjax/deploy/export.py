"""Export a model to its packed deployed form, save it (orbax + manifest) and load it back.

  exported = export_model(model, input_shape=(32, 32, 3), mean=mean, std=std, classes=names)
  save(exported, "exported/bin_vgg16")
  predict = load("exported/bin_vgg16")
  logits = predict(images)          # uint8 [N, 32, 32, 3] (or float32, already normalised)

A saved model is a directory:
  manifest.json  format and version, model name and options, input shape and normalisation,
                 classes, the source checkpoint, the program (ops and static attributes), the
                 shape and dtype of every array, and the size report (`xnorjax.deploy.sizes`).
  arrays/        the program's arrays (packed uint32 kernels, epilogue scales and biases, pool
                 masks, the float layers' parameters), an orbax checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import xnorjax
from xnorjax.deploy import convert
from xnorjax.deploy import fold as fold_lib
from xnorjax.deploy import program as program_lib
from xnorjax.deploy import sizes as sizes_lib

FORMAT = "xnorjax-deploy"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
ARRAYS_DIR = "arrays"


@dataclasses.dataclass
class Exported:
  """A deployed program with its arrays and manifest (JSON-ready), in memory."""
  program: list[program_lib.Op]
  arrays: dict[str, dict[str, jax.Array]]
  manifest: dict[str, Any]


def _float_list(values, n: int, name: str) -> list[float]:
  v = np.asarray(values, np.float32).reshape(-1)
  if v.shape != (n,):
    raise ValueError(f"{name} must have {n} values (one per input channel), got shape {v.shape}")
  return [float(x) for x in v]


def _array_specs(arrays) -> dict:
  return {name: {k: {"shape": list(np.shape(v)), "dtype": np.asarray(v).dtype.name}
                 for k, v in group.items()} for name, group in arrays.items()}


def export_model(model, *, input_shape: Sequence[int], mean=None, std=None,
                 classes: Optional[Sequence[str]] = None, model_name: Optional[str] = None,
                 model_options: Optional[Mapping[str, Any]] = None,
                 source: Optional[Mapping[str, Any]] = None) -> Exported:
  """The deployed form of `model` (its parameters and BatchNorm statistics as in evaluation mode).

  Args:
    model: a float32 model that `xnorjax.deploy.layer_program` converts (see there).
    input_shape: (H, W, C) of one input image.
    mean, std: per-channel normalisation of uint8 images on the 0..1 scale, as in training (the
      loaded predictor applies it to uint8 inputs); default 0 and 1.
    classes: class names (default "0", "1", ...); model_name, model_options, source: recorded in
      the manifest.
  """
  input_shape = [int(v) for v in input_shape]
  if len(input_shape) != 3 or min(input_shape) < 1:
    raise ValueError(f"input_shape must be (H, W, C) of positive ints, got {input_shape}")
  layer_ops, layer_arrays = convert.layer_program(model)
  folded = fold_lib.fold_program(layer_ops, layer_arrays)
  channels = input_shape[-1]
  mean = _float_list(np.zeros(channels) if mean is None else mean, channels, "mean")
  std = _float_list(np.ones(channels) if std is None else std, channels, "std")
  if min(std) <= 0:
    raise ValueError(f"std must be positive, got {std}")
  probe = jax.eval_shape(functools.partial(program_lib.run, folded.program),
                         folded.arrays, jax.ShapeDtypeStruct((1, *input_shape), jnp.float32))
  if probe.ndim != 2:
    raise ValueError(f"the program maps an input of {input_shape} to shape {probe.shape[1:]}, "
                     "not to logits [classes]")
  num_classes = int(probe.shape[-1])
  classes = [str(c) for c in (range(num_classes) if classes is None else classes)]
  if len(classes) != num_classes:
    raise ValueError(f"{len(classes)} class names for a model with {num_classes} outputs")
  manifest = {
      "format": FORMAT,
      "format_version": FORMAT_VERSION,
      "xnorjax_version": xnorjax.__version__,
      "jax_version": jax.__version__,
      "model": model_name or type(model).__name__,
      "model_options": dict(model_options or {}),
      "num_classes": num_classes,
      "classes": classes,
      "input": {"shape": input_shape, "dtype": "uint8", "mean": mean, "std": std},
      "source": dict(source or {}),
      "program": [op.to_json() for op in folded.program],
      "arrays": _array_specs(folded.arrays),
      "sizes": sizes_lib.size_report(layer_arrays, folded, convert.model_bytes(model)),
  }
  return Exported(folded.program, folded.arrays, manifest)


def _orbax():
  try:
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("saving and loading exported models needs orbax-checkpoint "
                      "(pip install orbax-checkpoint, or xnorjax[experiments])") from e
  return ocp


def save(exported: Exported, path: str, *, overwrite: bool = False) -> dict:
  """Writes `exported` to the directory `path`; returns the manifest written (with file sizes)."""
  ocp = _orbax()
  path = os.path.abspath(path)
  if os.path.exists(path):
    if not overwrite:
      raise FileExistsError(f"{path} exists; choose another output path or pass overwrite=True")
    if not os.path.isfile(os.path.join(path, MANIFEST_FILE)):
      raise FileExistsError(f"{path} exists and is not an exported model: not overwriting it")
    shutil.rmtree(path)
  os.makedirs(path)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(os.path.join(path, ARRAYS_DIR), exported.arrays)
  manifest = dict(exported.manifest)
  arrays_bytes = sizes_lib.directory_bytes(os.path.join(path, ARRAYS_DIR))
  manifest["sizes"] = {**manifest["sizes"], "arrays_dir_bytes": arrays_bytes}
  with open(os.path.join(path, MANIFEST_FILE), "w", encoding="utf-8") as f:
    json.dump(manifest, f, indent=1)
    f.write("\n")
  return manifest


def read_manifest(path: str) -> dict:
  """The manifest of the exported model in `path`, checked for format and version."""
  file = os.path.join(path, MANIFEST_FILE)
  if not os.path.isfile(file):
    raise FileNotFoundError(f"{path!r} has no {MANIFEST_FILE}: not a model exported by "
                            "python -m experiments.export")
  try:
    with open(file, encoding="utf-8") as f:
      manifest = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{file} is not valid JSON: {e}") from e
  if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
    raise ValueError(f"{file} is not an {FORMAT} manifest")
  if manifest.get("format_version") != FORMAT_VERSION:
    raise ValueError(f"{file} has format_version {manifest.get('format_version')!r}; this xnorjax "
                     f"reads version {FORMAT_VERSION}: export the model again")
  return manifest


class Predictor:
  """A loaded model: `predictor(images)` -> float32 logits [N, classes], jitted.

  images: uint8 [N, H, W, C] (normalised here with the manifest's mean and std, as in training),
  or a float array already normalised (the training-time model's input). Binary layers run
  through the packed XNOR kernels (C++ on CPU, CUDA where built, the pure-JAX reference
  elsewhere) with activations packed from the first binary layer to the last.
  """

  def __init__(self, program: Sequence[program_lib.Op], arrays, manifest: Mapping[str, Any]):
    program_lib.check_program(program, arrays)
    self.program = list(program)
    self.arrays = arrays
    self.manifest = dict(manifest)
    self.input_shape = tuple(manifest["input"]["shape"])
    self.classes = tuple(manifest["classes"])
    mean = jnp.asarray(manifest["input"]["mean"], jnp.float32)
    std = jnp.asarray(manifest["input"]["std"], jnp.float32)
    self._forward = jax.jit(functools.partial(_forward, tuple(self.program), mean, std))

  def __call__(self, images) -> jax.Array:
    images = images if isinstance(images, jax.Array) else jnp.asarray(images)
    if images.ndim != 4 or tuple(images.shape[1:]) != self.input_shape:
      raise ValueError(f"images must have shape [N, {', '.join(map(str, self.input_shape))}], "
                       f"got {tuple(images.shape)}")
    if images.shape[0] < 1:
      raise ValueError("images is an empty batch")
    if images.dtype != jnp.uint8 and not jnp.issubdtype(images.dtype, jnp.floating):
      raise TypeError(f"images must be uint8 (raw) or float (normalised), got dtype {images.dtype}")
    return self._forward(self.arrays, images)


def _forward(program, mean, std, arrays, images):
  if images.dtype == jnp.uint8:  # as experiments.trainer.normalize
    x = (images.astype(jnp.float32) * (1.0 / 255.0) - mean) / std
  else:
    x = images.astype(jnp.float32)
  return program_lib.run(program, arrays, x)


def load(path: str) -> Predictor:
  """The exported model in `path` (from `save` or python -m experiments.export), ready to run."""
  ocp = _orbax()
  path = os.path.abspath(path)
  manifest = read_manifest(path)
  program = [program_lib.Op.from_json(r) for r in manifest["program"]]
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = {name: {k: jax.ShapeDtypeStruct(tuple(s["shape"]), jnp.dtype(s["dtype"]),
                                             sharding=device) for k, s in group.items()}
              for name, group in manifest["arrays"].items()}
  with ocp.StandardCheckpointer() as checkpointer:
    arrays = checkpointer.restore(os.path.join(path, ARRAYS_DIR), abstract)
  return Predictor(program, arrays, manifest)
