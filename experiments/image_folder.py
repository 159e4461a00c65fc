"""Image-folder data source: `split/class/*.png|jpg` trees, as a folder or a tarball, decoded once.

Layout (as produced by common CIFAR converters, and the shared CIFAR-10 copy):

    <root>/train/<class>/<name>.jpg|jpeg|png
    <root>/test/<class>/<name>.jpg|jpeg|png

`<root>` is the given folder, or its only sub-folder (e.g. `cifar10-jpeg/`); a .tar, .tar.gz or
.tgz holding such a tree is read directly (streamed, not unpacked). Classes are the sorted folder
names (for CIFAR-10 that is the standard order, 0 airplane ... 9 truck). Decoding 60,000 images
takes seconds, so the decoded uint8 arrays are cached in an .npz keyed by the source's path, size
and modification times; later runs load the cache.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tempfile
from typing import Iterable, Iterator, Optional

from absl import logging
import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
SPLITS = ("train", "test")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")


def default_cache_dir() -> str:
  """$XNORJAX_CACHE_DIR, else $XDG_CACHE_HOME/xnorjax, else ~/.cache/xnorjax."""
  if os.environ.get("XNORJAX_CACHE_DIR"):
    return os.environ["XNORJAX_CACHE_DIR"]
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "xnorjax")


def _is_tarball(path: str) -> bool:
  return os.path.isfile(path) and path.endswith(TAR_SUFFIXES)


def _split_class_name(relpath: str) -> Optional[tuple[str, str, str]]:
  """(split, class, file) from a path ending in split/class/file.ext, or None if not an image."""
  parts = relpath.replace(os.sep, "/").split("/")
  if len(parts) < 3 or not parts[-1].lower().endswith(IMAGE_EXTENSIONS):
    return None
  if parts[-1].startswith("."):
    return None
  split, cls, name = parts[-3:]
  if split not in SPLITS:
    return None
  return split, cls, name


def _folder_root(path: str) -> str:
  """The folder holding train/ and test/: `path` itself or its only sub-folder."""
  if all(os.path.isdir(os.path.join(path, s)) for s in SPLITS):
    return path
  subdirs = [d for d in sorted(os.listdir(path)) if os.path.isdir(os.path.join(path, d))]
  if len(subdirs) == 1:
    inner = os.path.join(path, subdirs[0])
    if all(os.path.isdir(os.path.join(inner, s)) for s in SPLITS):
      return inner
  raise ValueError(f"image folder {path!r} has no train/ and test/ sub-folders (found: "
                   f"{', '.join(sorted(os.listdir(path))) or 'nothing'}); expected "
                   "<root>/{train,test}/<class>/*.png|jpg")


def _iter_folder(root: str) -> Iterator[tuple[str, str, str, bytes]]:
  for split in SPLITS:
    split_dir = os.path.join(root, split)
    for cls in sorted(os.listdir(split_dir)):
      cls_dir = os.path.join(split_dir, cls)
      if not os.path.isdir(cls_dir):
        continue
      for name in sorted(os.listdir(cls_dir)):
        if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
          with open(os.path.join(cls_dir, name), "rb") as f:
            yield split, cls, os.path.join(split, cls, name), f.read()


def _iter_tarball(path: str) -> Iterator[tuple[str, str, str, bytes]]:
  try:
    with tarfile.open(path, "r:*") as tar:
      for member in tar:
        if not member.isfile():
          continue
        parsed = _split_class_name(member.name)
        if parsed is None:
          continue
        split, cls, _ = parsed
        yield split, cls, member.name, tar.extractfile(member).read()
  except (tarfile.TarError, EOFError, OSError) as e:
    raise ValueError(f"cannot read tarball {path!r}: {e}") from e


def _source_fingerprint(path: str) -> str:
  """A hash of the source's path, sizes and modification times (changes when the data does)."""
  h = hashlib.sha256(os.path.abspath(path).encode())
  if os.path.isfile(path):
    st = os.stat(path)
    h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
  else:
    for dirpath, dirnames, filenames in os.walk(path):
      dirnames.sort()
      for name in sorted(filenames):
        st = os.stat(os.path.join(dirpath, name))
        h.update(f"{os.path.relpath(os.path.join(dirpath, name), path)}:{st.st_size}:{st.st_mtime_ns}".encode())
  return h.hexdigest()[:16]


def _decode(records: Iterable[tuple[str, str, str, bytes]], image_size: int):
  """Decodes (split, class, name, bytes) records into per-split uint8 arrays and class names."""
  from PIL import Image  # Local: only this source needs Pillow.

  images = {s: [] for s in SPLITS}
  classes = {s: [] for s in SPLITS}
  for split, cls, name, data in records:
    try:
      with Image.open(io.BytesIO(data)) as img:
        if img.size != (image_size, image_size):
          raise ValueError(f"image {name!r} is {img.size[0]}x{img.size[1]}, expected "
                           f"{image_size}x{image_size} (config.data.image_size)")
        array = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (OSError, SyntaxError) as e:  # PIL's UnidentifiedImageError is an OSError.
      raise ValueError(f"cannot decode image {name!r}: {e}") from e
    images[split].append(array)
    classes[split].append(cls)
  for split in SPLITS:
    if not images[split]:
      raise ValueError(f"no images found for split {split!r}; expected {split}/<class>/*.png|jpg")
  names = sorted(set(classes["train"]))
  if sorted(set(classes["test"])) != names:
    raise ValueError(f"train and test have different classes: train {names}, "
                     f"test {sorted(set(classes['test']))}")
  index = {c: i for i, c in enumerate(names)}
  out = {}
  for split in SPLITS:
    out[split] = (np.stack(images[split]), np.array([index[c] for c in classes[split]], np.int32))
  return out, names


def load_image_folder(path: str, *, image_size: int = 32, cache_dir: Optional[str] = None):
  """Loads a `split/class/image` tree (folder or tarball) as uint8 arrays, through the cache.

  Args:
    path: the folder or the .tar/.tar.gz/.tgz file.
    image_size: every image must be image_size x image_size (else ValueError naming the file).
    cache_dir: where the decoded .npz is kept ("" or None: `default_cache_dir()`).

  Returns:
    ({"train": (images [N, H, W, 3] uint8, labels [N] int32), "test": (...)}, class_names)
  """
  if not path:
    raise ValueError("no image folder given: set config.data.path (or $XNORJAX_CIFAR10_JPEG)")
  if not os.path.exists(path):
    raise FileNotFoundError(f"image folder or tarball {path!r} does not exist (config.data.path)")
  if os.path.isfile(path) and not _is_tarball(path):
    raise ValueError(f"{path!r} is a file but not a tarball ({', '.join(TAR_SUFFIXES)}); "
                     "give a folder with train/ and test/ or such a tarball")
  root = path if _is_tarball(path) else _folder_root(path)
  cache_dir = cache_dir or default_cache_dir()
  stem = os.path.basename(os.path.normpath(path)).split(".")[0] or "images"
  cache_file = os.path.join(cache_dir, f"{stem}-{image_size}-{_source_fingerprint(path)}.npz")
  if os.path.exists(cache_file):
    with np.load(cache_file) as f:
      splits = {s: (f[f"{s}_images"], f[f"{s}_labels"]) for s in SPLITS}
      names = [str(n) for n in f["class_names"]]
    logging.info("Loaded %s from cache %s", path, cache_file)
    return splits, names
  logging.info("Decoding %s (once; cached in %s)", path, cache_file)
  records = _iter_tarball(path) if _is_tarball(path) else _iter_folder(root)
  splits, names = _decode(records, image_size)
  os.makedirs(cache_dir, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".npz.tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, class_names=np.array(names),
               **{f"{s}_{k}": v for s in SPLITS for k, v in zip(("images", "labels"), splits[s])})
    os.replace(tmp, cache_file)  # Atomic: concurrent runs never read a half-written cache.
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return splits, names
