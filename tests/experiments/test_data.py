"""Tests for the input pipeline (experiments/input_pipeline.py, experiments/image_folder.py)."""

import os
import sys
import tarfile

import numpy as np
import pytest

from experiments import image_folder
from experiments import input_pipeline as ip
from experiments.configs import default

CIFAR10 = os.environ.get(ip.CIFAR10_ENV_VAR, "")


def _data_config(**overrides):
  cfg = default.get_config().data
  cfg.unlock()
  for k, v in overrides.items():
    cfg[k] = v
  return cfg


def _random_split(rng, n=40, size=8, classes=4):
  images = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
  labels = rng.permutation(np.arange(n) % classes).astype(np.int32)
  return ip.Split(images, labels)


# ---- Augmentation: the vectorised gather against a per-image reference ------------------------

def _crop_and_flip_reference(images, offsets, flips, padding):
  out = []
  for img, (oy, ox), flip in zip(images, offsets, flips):
    padded = np.pad(img, ((padding, padding), (padding, padding), (0, 0)))
    crop = padded[oy:oy + img.shape[0], ox:ox + img.shape[1]]
    out.append(crop[:, ::-1] if flip else crop)
  return np.stack(out)


@pytest.mark.parametrize("padding", [0, 1, 4])
def test_crop_and_flip_matches_reference(rng, padding):
  images = rng.integers(0, 256, size=(16, 12, 10, 3), dtype=np.uint8)
  offsets = rng.integers(0, 2 * padding + 1, size=(16, 2))
  flips = rng.random(16) < 0.5
  np.testing.assert_array_equal(ip.crop_and_flip(images, offsets, flips, padding),
                                _crop_and_flip_reference(images, offsets, flips, padding))


def test_augmentation_params_are_seeded_and_in_range(rng):
  seed = int(rng.integers(1 << 30))
  a = ip.augmentation_params(256, seed, 3, 7, padding=4, flip=True)
  b = ip.augmentation_params(256, seed, 3, 7, padding=4, flip=True)
  c = ip.augmentation_params(256, seed, 3, 8, padding=4, flip=True)
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])
  assert not np.array_equal(a[0], c[0])
  assert a[0].min() >= 0 and a[0].max() <= 8
  assert 0 < a[1].mean() < 1
  assert not ip.augmentation_params(64, seed, 0, 0, padding=4, flip=False)[1].any()


def test_epoch_permutation_depends_on_seed_and_epoch(rng):
  seed = int(rng.integers(1 << 30))
  p = ip.epoch_permutation(100, seed, 2)
  np.testing.assert_array_equal(np.sort(p), np.arange(100))
  np.testing.assert_array_equal(p, ip.epoch_permutation(100, seed, 2))
  assert not np.array_equal(p, ip.epoch_permutation(100, seed, 3))
  assert not np.array_equal(p, ip.epoch_permutation(100, seed + 1, 2))


# ---- Batching --------------------------------------------------------------------------------

def test_train_batches_resume_anywhere_and_cover_each_epoch(rng):
  split = _random_split(rng, n=50)
  spec = ip.TrainBatchSpec(batch_size=8, seed=int(rng.integers(1 << 30)))
  full = list(ip.train_batches(split, spec, 0, 18))  # 6 steps per epoch (2 dropped), 3 epochs.
  resumed = list(ip.train_batches(split, spec, 7, 18))
  for (s1, x1, y1), (s2, x2, y2) in zip(full[7:], resumed):
    assert s1 == s2
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
  # Without augmentation, an epoch's batches are distinct training images.
  plain = ip.TrainBatchSpec(batch_size=8, seed=spec.seed, augment=False)
  epoch1 = np.concatenate([x for _, x, _ in ip.train_batches(split, plain, 6, 12)])
  keys = {x.tobytes() for x in epoch1}
  assert len(keys) == 48 and keys <= {x.tobytes() for x in split.images}


def test_process_shares_concatenate_to_the_global_batch(rng):
  split = _random_split(rng, n=64)
  seed = int(rng.integers(1 << 30))
  whole = ip.train_batch(split, ip.TrainBatchSpec(batch_size=16, seed=seed), 5)
  shares = [ip.train_batch(split, ip.TrainBatchSpec(batch_size=16, seed=seed, process_index=i,
                                                    process_count=4), 5) for i in range(4)]
  np.testing.assert_array_equal(np.concatenate([s[0] for s in shares]), whole[0])
  np.testing.assert_array_equal(np.concatenate([s[1] for s in shares]), whole[1])


def test_eval_batches_cover_the_split_once(rng):
  split = _random_split(rng, n=37)
  batches = list(ip.eval_batches(split, 16))
  assert [len(b[0]) for b in batches] == [16, 16, 16]
  images = np.concatenate([b[0][b[2]] for b in batches])
  labels = np.concatenate([b[1][b[2]] for b in batches])
  np.testing.assert_array_equal(images, split.images)
  np.testing.assert_array_equal(labels, split.labels)


def test_prefetcher_yields_in_order_and_reraises(rng):
  items = list(rng.integers(0, 100, size=10))
  assert list(ip.Prefetcher(iter(items), 3)) == items

  def failing():
    yield 1
    raise OSError("disk on fire")

  p = ip.Prefetcher(failing(), 2)
  assert next(p) == 1
  with pytest.raises(OSError, match="disk on fire"):
    next(p)


# ---- Splits and statistics -------------------------------------------------------------------

def test_validation_holdout_is_stratified_disjoint_and_seeded(rng):
  n, classes = 300, 10
  images = (np.arange(n)[:, None, None, None] + np.zeros((1, 2, 2, 3))).astype(np.uint16)
  labels = rng.permutation(np.arange(n) % classes).astype(np.int32)
  split = ip.Split(images, labels)
  train, val = ip.holdout_validation(split, 50, seed=3)
  assert len(train) == 250 and len(val) == 50
  np.testing.assert_array_equal(np.bincount(val.labels, minlength=classes), np.full(classes, 5))
  ids_train, ids_val = set(train.images[:, 0, 0, 0]), set(val.images[:, 0, 0, 0])
  assert not ids_train & ids_val and len(ids_train | ids_val) == n
  again = ip.holdout_validation(split, 50, seed=3)[1]
  np.testing.assert_array_equal(again.images, val.images)
  other = ip.holdout_validation(split, 50, seed=4)[1]
  assert set(other.images[:, 0, 0, 0]) != ids_val
  with pytest.raises(ValueError, match="num_validation=300"):
    ip.holdout_validation(split, 300, seed=0)


def test_channel_stats_match_numpy(rng):
  images = rng.integers(0, 256, size=(50, 6, 6, 3), dtype=np.uint8)
  mean, std = ip.channel_stats(images, chunk=7)
  x = images.astype(np.float64) / 255
  np.testing.assert_allclose(mean, x.mean(axis=(0, 1, 2)), rtol=1e-6)
  np.testing.assert_allclose(std, x.std(axis=(0, 1, 2)), rtol=1e-5)


def test_synthetic_source_and_configuration_errors():
  cfg = _data_config(source="synthetic", synthetic_train_size=200, synthetic_test_size=50,
                     num_validation=20)
  data = ip.load_data(cfg, seed=0)
  assert (len(data.train), len(data.validation), len(data.test)) == (180, 20, 50)
  assert data.train.images.dtype == np.uint8 and data.train.images.shape[1:] == (32, 32, 3)
  with pytest.raises(ValueError, match=r"expected \[N, 16, 16, 3\].*image_size=16"):
    ip._check_split("train", data.train.images, data.train.labels, 16, 10)
  with pytest.raises(ValueError, match=r"labels span \[0, 9\].*num_classes=5"):
    ip._check_split("train", data.train.images, data.train.labels, 32, 5)
  with pytest.raises(ValueError, match="source='imagenet'"):
    ip.resolve_source(_data_config(source="imagenet"))


def test_auto_source_uses_the_environment_variable(monkeypatch):
  monkeypatch.setenv(ip.CIFAR10_ENV_VAR, "/somewhere/cifar.tar.gz")
  assert ip.resolve_source(_data_config(source="auto", path="")) == (
      "image_folder", "/somewhere/cifar.tar.gz")
  monkeypatch.delenv(ip.CIFAR10_ENV_VAR)
  assert ip.resolve_source(_data_config(source="auto", path=""))[0] == "tfds"
  assert ip.resolve_source(_data_config(source="auto", path="/x")) == ("image_folder", "/x")


def test_tfds_missing_gives_a_clear_error(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
  with pytest.raises(ImportError, match="image_folder"):
    ip.load_data(_data_config(source="tfds"), seed=0)


def test_tfds_source_with_mock_data():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=60):
    data = ip.load_data(_data_config(source="tfds", num_validation=20), seed=0)
  assert (len(data.train), len(data.validation), len(data.test)) == (40, 20, 60)
  assert data.train.images.shape[1:] == (32, 32, 3) and data.train.images.dtype == np.uint8


# ---- Image folders and tarballs ----------------------------------------------------------------

def _write_tree(root, rng, *, size=8, classes=("cat", "airplane", "dog"), per_class=(3, 2),
                fmt="PNG"):
  """Writes root/{train,test}/<class>/<i>.png with random pixels; returns the expected arrays."""
  from PIL import Image
  expected = {}
  for split, count in zip(("train", "test"), per_class):
    images, labels = [], []
    for label, cls in enumerate(sorted(classes)):
      os.makedirs(os.path.join(root, split, cls), exist_ok=True)
      for i in range(count):
        pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(os.path.join(root, split, cls, f"{i:04d}.png"), fmt)
        images.append(pixels)
        labels.append(label)
    expected[split] = (np.stack(images), np.array(labels))
  return expected


def _assert_same(splits, expected):
  for split in ("train", "test"):
    images, labels = splits[split]
    order = np.lexsort((images.reshape(len(images), -1).sum(1), labels))
    order_e = np.lexsort((expected[split][0].reshape(len(labels), -1).sum(1), expected[split][1]))
    np.testing.assert_array_equal(images[order], expected[split][0][order_e])
    np.testing.assert_array_equal(labels[order], expected[split][1][order_e])


def test_image_folder_and_tarball_load_the_same_arrays(tmp_path, rng, monkeypatch):
  root = tmp_path / "data" / "mycifar"
  expected = _write_tree(str(root), rng)
  cache = str(tmp_path / "cache")
  splits, names = image_folder.load_image_folder(str(tmp_path / "data"), image_size=8, cache_dir=cache)
  assert names == ["airplane", "cat", "dog"]
  _assert_same(splits, expected)
  tarball = tmp_path / "mycifar.tar.gz"
  with tarfile.open(tarball, "w:gz") as tar:
    tar.add(root, arcname="mycifar")
  splits_tar, names_tar = image_folder.load_image_folder(str(tarball), image_size=8, cache_dir=cache)
  assert names_tar == names
  _assert_same(splits_tar, expected)
  # The second load comes from the cache, without decoding.
  monkeypatch.setattr(image_folder, "_decode", lambda *a: pytest.fail("decoded again"))
  cached, _ = image_folder.load_image_folder(str(tarball), image_size=8, cache_dir=cache)
  _assert_same(cached, expected)


def test_image_folder_errors_name_the_problem(tmp_path, rng):
  cache = str(tmp_path / "cache")
  with pytest.raises(FileNotFoundError, match="does not exist"):
    image_folder.load_image_folder(str(tmp_path / "nope"), cache_dir=cache)
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="no train/ and test/"):
    image_folder.load_image_folder(str(tmp_path / "empty"), cache_dir=cache)
  (tmp_path / "notes.txt").write_text("hello")
  with pytest.raises(ValueError, match="not a tarball"):
    image_folder.load_image_folder(str(tmp_path / "notes.txt"), cache_dir=cache)
  _write_tree(str(tmp_path / "big"), rng, size=10)
  with pytest.raises(ValueError, match=r"is 10x10, expected 8x8"):
    image_folder.load_image_folder(str(tmp_path / "big"), image_size=8, cache_dir=cache)
  _write_tree(str(tmp_path / "bad"), rng, size=8)
  (tmp_path / "bad" / "train" / "cat" / "9999.png").write_bytes(b"not an image")
  with pytest.raises(ValueError, match="cannot decode image.*9999.png"):
    image_folder.load_image_folder(str(tmp_path / "bad"), image_size=8, cache_dir=cache)
  _write_tree(str(tmp_path / "mismatch"), rng, size=8)
  (tmp_path / "mismatch" / "test" / "cat").rename(tmp_path / "mismatch" / "test" / "cow")
  with pytest.raises(ValueError, match="different classes"):
    image_folder.load_image_folder(str(tmp_path / "mismatch"), image_size=8, cache_dir=cache)
  (tmp_path / "broken.tar.gz").write_bytes(b"\x1f\x8b garbage")
  with pytest.raises(ValueError, match="cannot read tarball"):
    image_folder.load_image_folder(str(tmp_path / "broken.tar.gz"), image_size=8, cache_dir=cache)


@pytest.mark.skipif(not CIFAR10, reason=f"${ip.CIFAR10_ENV_VAR} is not set (real CIFAR-10 copy)")
def test_real_cifar10_splits(tmp_path_factory):
  cache = os.environ.get("XNORJAX_CACHE_DIR") or str(tmp_path_factory.mktemp("cifar_cache"))
  data = ip.load_data(_data_config(source="image_folder", path=CIFAR10, cache_dir=cache), seed=0)
  assert data.class_names[0] == "airplane" and data.class_names[-1] == "truck"
  assert (len(data.train), len(data.validation), len(data.test)) == (45000, 5000, 10000)
  np.testing.assert_array_equal(np.bincount(data.validation.labels), np.full(10, 500))
  np.testing.assert_array_equal(np.bincount(data.test.labels), np.full(10, 1000))
  # The README's per-channel train mean (0..255) of the JPEG copy: (125.27, 122.93, 113.86).
  np.testing.assert_allclose(data.mean * 255, [125.27, 122.93, 113.86], atol=0.3)
