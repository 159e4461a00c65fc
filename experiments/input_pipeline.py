"""CIFAR-style input pipeline: sources, a seeded validation hold-out, augmentation and batching.

The whole data set lives in memory as uint8 (CIFAR-10: 180 MB); batches are gathered, augmented
(random crop from zero padding, horizontal flip) in vectorised numpy on a background thread, and
normalised inside the jitted step. Everything random is a function of the seed: the order of epoch
e is `epoch_permutation(n, seed, e)` and the augmentation of batch b of epoch e draws from
(seed, e, b), so a run resumed from step s sees exactly the batches an uninterrupted run sees.

Sources (config.data.source):
  "tfds"          tensorflow-datasets `cifar10` (TensorFlow needed; downloads where there is internet).
  "image_folder"  `split/class/*.png|jpg` folder or tarball (config.data.path or
                  $XNORJAX_CIFAR10_JPEG); see experiments/image_folder.py. No TensorFlow needed.
  "synthetic"     random class-dependent images, for smoke tests.
  "auto"          image_folder when a path is configured or $XNORJAX_CIFAR10_JPEG is set, else tfds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import queue
import threading
import time
from typing import Iterator, Optional

from absl import logging
import numpy as np

from experiments import image_folder

CIFAR10_ENV_VAR = "XNORJAX_CIFAR10_JPEG"
SOURCES = ("auto", "tfds", "image_folder", "synthetic")


@dataclasses.dataclass(frozen=True)
class Split:
  """Images (uint8, [N, H, W, 3]) and labels (int32, [N])."""
  images: np.ndarray
  labels: np.ndarray

  def __len__(self):
    return len(self.labels)


@dataclasses.dataclass(frozen=True)
class Data:
  """Train, validation (held out from the training set; None when num_validation is 0) and test.

  mean and std are the per-channel statistics of `train` on the 0..1 scale (normalisation).
  """
  train: Split
  validation: Optional[Split]
  test: Split
  class_names: tuple[str, ...]
  mean: np.ndarray
  std: np.ndarray
  source: str


def fingerprint(*splits: Optional[Split]) -> str:
  """A short hash of the images and labels of `splits` (in order; None skipped): a resumed run
  checks that it trains on the data its checkpoints were trained on."""
  h = hashlib.sha256()
  for split in splits:
    if split is not None:
      h.update(np.ascontiguousarray(split.images).data)
      h.update(np.ascontiguousarray(split.labels, np.int64).data)
  return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------------------
# Sources.
# ------------------------------------------------------------------------------------------------

def resolve_source(cfg) -> tuple[str, str]:
  """(source, path) after applying "auto" and the $XNORJAX_CIFAR10_JPEG default for the path."""
  source = cfg.source
  if source not in SOURCES:
    raise ValueError(f"config.data.source={source!r} is not one of {', '.join(SOURCES)}")
  path = cfg.path or os.environ.get(CIFAR10_ENV_VAR, "")
  if source == "auto":
    source = "image_folder" if path else "tfds"
  return source, path


def synthetic_splits(num_train: int, num_test: int, *, num_classes: int, image_size: int,
                     seed: int = 0):
  """Random images whose class shows as a smooth colour template plus noise (learnable)."""
  rng = np.random.default_rng([seed, 12345])
  coarse = rng.uniform(0, 255, size=(num_classes, 4, 4, 3))
  reps = -(-image_size // 4)
  templates = np.repeat(np.repeat(coarse, reps, axis=1), reps, axis=2)[:, :image_size, :image_size]

  def make(n):
    labels = rng.permutation(np.arange(n) % num_classes).astype(np.int32)
    noise = rng.normal(0, 40, size=(n, image_size, image_size, 3))
    return np.clip(templates[labels] + noise, 0, 255).astype(np.uint8), labels

  return {"train": make(num_train), "test": make(num_test)}, [f"class{i}" for i in range(num_classes)]


def _load_tfds(cfg):
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        "config.data.source='tfds' needs TensorFlow and tensorflow-datasets (pip install "
        "'xnorjax[tfds]'); without them use config.data.source='image_folder' with "
        f"config.data.path (or ${CIFAR10_ENV_VAR}) pointing at a split/class/*.png|jpg tree") from e
  tf.config.set_visible_devices([], "GPU")  # Keep TensorFlow off the accelerators JAX uses.
  try:
    train, test = tfds.load(cfg.tfds_name, split=["train", "test"], as_supervised=True,
                            data_dir=cfg.tfds_data_dir or None, download=cfg.tfds_download)
  except Exception as e:  # tfds raises many types (network, missing files, ...): say what to do.
    raise RuntimeError(
        f"could not load TFDS {cfg.tfds_name!r} (data_dir={cfg.tfds_data_dir or 'default'}): "
        f"{type(e).__name__}: {e}\nWithout internet access, prepare it elsewhere or use "
        f"config.data.source='image_folder' with config.data.path (or ${CIFAR10_ENV_VAR})") from e

  def to_numpy(ds):  # Batched iteration (batch_size=-1 crashes TensorFlow on tfds' mock data).
    xs, ys = zip(*tfds.as_numpy(ds.batch(8192)))
    return np.concatenate(xs), np.concatenate(ys)

  (train_x, train_y), (test_x, test_y) = to_numpy(train), to_numpy(test)
  names = [f"class{i}" for i in range(int(max(train_y.max(), test_y.max())) + 1)]
  try:
    names = list(tfds.builder(cfg.tfds_name, data_dir=cfg.tfds_data_dir or None)
                 .info.features["label"].names)
  except Exception:  # pylint: disable=broad-except  Names are cosmetic.
    pass
  return {"train": (train_x, train_y.astype(np.int32)),
          "test": (test_x, test_y.astype(np.int32))}, names


def _check_split(name, images, labels, image_size, num_classes):
  if len(images) == 0:
    raise ValueError(f"the {name} split has no images")
  if images.ndim != 4 or images.shape[1:] != (image_size, image_size, 3):
    raise ValueError(f"{name} images have shape {images.shape}, expected "
                     f"[N, {image_size}, {image_size}, 3] (config.data.image_size={image_size})")
  if images.dtype != np.uint8:
    raise ValueError(f"{name} images must be uint8, got {images.dtype}")
  if len(labels) != len(images):
    raise ValueError(f"{name}: {len(images)} images but {len(labels)} labels")
  if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"{name} labels span [{labels.min()}, {labels.max()}], expected "
                     f"[0, {num_classes}) (config.data.num_classes={num_classes})")


# ------------------------------------------------------------------------------------------------
# Splits and statistics.
# ------------------------------------------------------------------------------------------------

def holdout_validation(split: Split, num_validation: int, seed: int) -> tuple[Split, Split]:
  """Stratified, seeded hold-out of `num_validation` examples (sklearn's train_test_split)."""
  from sklearn.model_selection import train_test_split  # pylint: disable=g-import-not-at-top

  n = len(split)
  if not 0 < num_validation < n:
    raise ValueError(f"config.data.num_validation={num_validation} must be in (0, {n}) "
                     f"(the training set has {n} images)")
  try:
    train_idx, val_idx = train_test_split(np.arange(n), test_size=num_validation,
                                          stratify=split.labels, random_state=seed)
  except ValueError as e:
    raise ValueError(f"cannot hold out a stratified validation set of {num_validation} from "
                     f"{n} training images: {e}") from e
  train_idx, val_idx = np.sort(train_idx), np.sort(val_idx)
  return (Split(split.images[train_idx], split.labels[train_idx]),
          Split(split.images[val_idx], split.labels[val_idx]))


def channel_stats(images: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and standard deviation on the 0..1 scale (float64 accumulation)."""
  total = np.zeros(3)
  total_sq = np.zeros(3)
  for i in range(0, len(images), chunk):
    x = images[i:i + chunk].astype(np.float64) / 255.0
    total += x.sum(axis=(0, 1, 2))
    total_sq += (x * x).sum(axis=(0, 1, 2))
  count = images.shape[0] * images.shape[1] * images.shape[2]
  mean = total / count
  std = np.sqrt(np.maximum(total_sq / count - mean * mean, 1e-12))
  return mean.astype(np.float32), std.astype(np.float32)


def check_data_config(cfg):
  """Rejects sizes that cannot describe a data set (config.data.*), before anything is loaded."""
  source, _ = resolve_source(cfg)
  minimums = {"image_size": 1, "num_classes": 1, "num_validation": 0, "crop_padding": 0,
              "prefetch": 0}
  if source == "synthetic":
    minimums.update(synthetic_train_size=1, synthetic_test_size=1)
  for field, minimum in minimums.items():
    value = cfg[field]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
      raise ValueError(f"config.data.{field}={value!r} must be an integer >= {minimum}")


def load_data(cfg, *, seed: int) -> Data:
  """Loads the configured source, checks it and holds out the validation split."""
  check_data_config(cfg)
  source, path = resolve_source(cfg)
  if source == "synthetic":
    splits, names = synthetic_splits(cfg.synthetic_train_size, cfg.synthetic_test_size,
                                     num_classes=cfg.num_classes, image_size=cfg.image_size,
                                     seed=seed)
  elif source == "image_folder":
    splits, names = image_folder.load_image_folder(path, image_size=cfg.image_size,
                                                   cache_dir=cfg.cache_dir or None)
  else:
    splits, names = _load_tfds(cfg)
  if len(names) != cfg.num_classes:
    raise ValueError(f"the {source} data has {len(names)} classes ({', '.join(names)}), but "
                     f"config.data.num_classes={cfg.num_classes}")
  for name in ("train", "test"):
    _check_split(name, *splits[name], cfg.image_size, cfg.num_classes)
  train = Split(*splits["train"])
  validation = None
  if cfg.num_validation:
    train, validation = holdout_validation(train, cfg.num_validation, cfg.split_seed)
  mean, std = channel_stats(train.images)
  return Data(train, validation, Split(*splits["test"]), tuple(names), mean, std, source)


# ------------------------------------------------------------------------------------------------
# Order and augmentation: functions of (seed, epoch, batch).
# ------------------------------------------------------------------------------------------------

def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The order of the training examples in epoch `epoch` (the same on every host and restart)."""
  return np.random.default_rng([seed, 0, epoch]).permutation(num_examples)


def augmentation_params(batch_size: int, seed: int, epoch: int, batch: int, *, padding: int,
                        flip: bool):
  """Crop offsets (y, x) in [0, 2 * padding] and flip flags of one global batch."""
  rng = np.random.default_rng([seed, 1, epoch, batch])
  offsets = rng.integers(0, 2 * padding + 1, size=(batch_size, 2))
  flips = rng.random(batch_size) < 0.5 if flip else np.zeros(batch_size, bool)
  return offsets, flips


def crop_and_flip(images: np.ndarray, offsets: np.ndarray, flips: np.ndarray, padding: int):
  """Random crop from zero padding and horizontal flip, as one gather (vectorised).

  Output pixel (i, j) of image b is padded[b, oy + i, ox + j], or padded[b, oy + i, ox + W-1-j]
  when flipped, where padded is the image with `padding` zero pixels on each side.
  """
  n, h, w, _ = images.shape
  if padding:
    images = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  rows = offsets[:, :1] + np.arange(h)[None, :]
  cols = np.where(flips[:, None], w - 1 - np.arange(w)[None, :], np.arange(w)[None, :])
  cols = offsets[:, 1:] + cols
  return images[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


@dataclasses.dataclass(frozen=True)
class TrainBatchSpec:
  """What the training batches are: global batch size, seed, augmentation, this host's share."""
  batch_size: int
  seed: int
  padding: int = 4
  flip: bool = True
  augment: bool = True
  process_index: int = 0
  process_count: int = 1


def train_batch_indices(num_examples: int, spec: TrainBatchSpec, step: int,
                        order: Optional[np.ndarray] = None):
  """What global training batch `step` is made of: (indices into the split [B], crop offsets
  [B, 2] and flip flags [B]; the augmentation is None without `spec.augment`).

  Epochs have num_examples // batch_size steps (the remainder is dropped); `order` may pass the
  epoch's `epoch_permutation` to save recomputing it. The host pipeline (`train_batch`) and the
  on-device one (experiments/device_pipeline.py) both build their batches from these.
  """
  steps_per_epoch = num_examples // spec.batch_size
  epoch, b = divmod(step, steps_per_epoch)
  if order is None:
    order = epoch_permutation(num_examples, spec.seed, epoch)
  idx = order[b * spec.batch_size:(b + 1) * spec.batch_size]
  if not spec.augment:
    return idx, None, None
  offsets, flips = augmentation_params(spec.batch_size, spec.seed, epoch, b, padding=spec.padding,
                                       flip=spec.flip)
  return idx, offsets, flips


def train_batch(split: Split, spec: TrainBatchSpec, step: int, order: Optional[np.ndarray] = None):
  """This host's share (images, labels) of training batch `step` (see `train_batch_indices`)."""
  idx, offsets, flips = train_batch_indices(len(split), spec, step, order)
  local = spec.batch_size // spec.process_count
  share = slice(spec.process_index * local, (spec.process_index + 1) * local)
  idx = idx[share]
  images = split.images[idx]
  if spec.augment:
    images = crop_and_flip(images, offsets[share], flips[share], spec.padding)
  return images, split.labels[idx]


def train_batches(split: Split, spec: TrainBatchSpec, start_step: int,
                  end_step: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
  """(step, images, labels) for steps start_step .. end_step - 1, each as `train_batch`."""
  steps_per_epoch = len(split) // spec.batch_size
  if steps_per_epoch < 1:
    raise ValueError(f"the training split has {len(split)} images, fewer than one batch of "
                     f"{spec.batch_size}")
  epoch, order = None, None
  for step in range(start_step, end_step):
    if step // steps_per_epoch != epoch:
      epoch = step // steps_per_epoch
      order = epoch_permutation(len(split), spec.seed, epoch)
    yield (step, *train_batch(split, spec, step, order))


def eval_batches(split: Split, batch_size: int, *, process_index: int = 0, process_count: int = 1):
  """(images, labels, mask) batches covering `split` once; the last is padded (mask False)."""
  n = len(split)
  local = batch_size // process_count
  for start in range(0, n, batch_size):
    idx = np.arange(start, start + batch_size)
    idx = idx[process_index * local:(process_index + 1) * local]
    mask = idx < n
    idx = np.where(mask, idx, 0)
    yield split.images[idx], split.labels[idx], mask


class Prefetcher:
  """Runs an iterator on a background thread, `size` items ahead, and times both sides.

  producer_seconds: time spent producing items (the pipeline's own cost);
  wait_seconds: time the consumer waited for an item (non-zero only if the pipeline lags).
  Exceptions in the producer are re-raised in the consumer.
  """

  _DONE = object()

  def __init__(self, iterator, size: int = 2):
    self._iterator = iterator
    self._queue = queue.Queue(maxsize=max(1, size))
    self._stop = threading.Event()
    self.producer_seconds = 0.0
    self.wait_seconds = 0.0
    self.items = 0
    self._thread = threading.Thread(target=self._run, daemon=True, name="input-prefetch")
    self._thread.start()

  def _put(self, item):
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def _run(self):
    try:
      while not self._stop.is_set():
        t = time.perf_counter()
        try:
          item = next(self._iterator)
        except StopIteration:
          break
        self.producer_seconds += time.perf_counter() - t
        if not self._put(item):
          return
      self._put(self._DONE)
    except BaseException as e:  # pylint: disable=broad-except  Re-raised in the consumer.
      self._put(e)

  def __iter__(self):
    return self

  def __next__(self):
    t = time.perf_counter()
    item = self._queue.get()
    self.wait_seconds += time.perf_counter() - t
    if item is self._DONE:
      raise StopIteration
    if isinstance(item, BaseException):
      raise item
    self.items += 1
    return item

  def close(self):
    self._stop.set()
    self._thread.join(timeout=5)


def log_data_summary(data: Data):
  logging.info("Data (%s): train %d, validation %s, test %d images; classes %s; mean %s std %s",
               data.source, len(data.train), len(data.validation) if data.validation else "none",
               len(data.test), ", ".join(data.class_names), np.round(data.mean, 4),
               np.round(data.std, 4))
