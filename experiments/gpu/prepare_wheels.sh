#!/usr/bin/env bash
# Prepares .whl/ (git-ignored) for experiments/gpu/check.sh on a GPU machine that has no network.
#
# What such a machine needs and what can travel (checked with `pip download`, 2026-11):
#   * jax itself: the project pins jax / jaxlib 0.10.2. Their CUDA wheels exist
#     (jax-cuda13-plugin and jax-cuda13-pjrt 0.10.2, and the cuda12 pair), but jaxlib 0.10.2
#     (85 MB) + jax_cuda13_pjrt (124 MB) + jax_cuda13_plugin (7.5 MB) is about 217 MB (cuda12:
#     268 MB), far above what a device call may carry (64 MiB). So check.sh runs on the
#     machine's own jax (seen there: jax 0.11.2 with jax-cuda13-plugin / -pjrt 0.11.2) and builds
#     the extension against that jaxlib's XLA FFI headers; the FFI API the kernels use is the same.
#   * nanobind, scikit-build-core, cmake, ninja, nvcc, pytest, hypothesis, numpy: on that image.
#   * flax and optax (xnorjax imports flax.nnx): on that image too, in its own versions. As a
#     fallback for an image without them, this script saves the project's pinned pure-Python
#     wheels (about 1 MB); check.sh installs them only if `import flax.nnx, optax` fails.
#
#   * ml_collections (experiments.train's configuration) is not on that image: saved here;
#     run.sh installs the carried wheels of the modules the machine lacks, and only those.
#   * the data: the shared CIFAR-10 copy lies outside the repository and does not travel. With
#     XNORJAX_CIFAR10_JPEG set, this script copies it to data/ (git-ignored, 19 MB), to carry.
#
# Usage (here, with network): experiments/gpu/prepare_wheels.sh; then carry `.whl` (and `data`)
# with the calls, e.g. a first call `bash experiments/gpu/check.sh` (GPU_CHECK_TOTAL_S=220 leaves
# room) and a second `XNORJAX_CIFAR10_JPEG=$PWD/data/cifar10-jpeg.tar.gz PYTHON=python3
# BUDGET_S=170 EPOCHS_VGG16=12 EPOCHS_BIN_VGG16=12 bash experiments/gpu/run.sh $OUT/run`.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
mkdir -p .whl
"$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform any -d .whl "flax==0.12.8" "optax==0.2.8" "ml_collections==1.1.0"
if [ -n "${XNORJAX_CIFAR10_JPEG:-}" ]; then
  mkdir -p data && cp "$XNORJAX_CIFAR10_JPEG" data/
fi
du -sh .whl
ls -la .whl
