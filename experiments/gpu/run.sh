#!/usr/bin/env bash
# Trains vgg16 and bin_vgg16 on one GPU within a 10-minute window; prints test accuracy and images/s.
#
#   XNORJAX_CIFAR10_JPEG=/path/to/cifar10-jpeg.tar.gz experiments/gpu/run.sh [OUTDIR]
#   experiments/gpu/run.sh [OUTDIR]      # without the variable: TFDS cifar10 (prepared, or downloadable)
#
# Each model runs `python -m experiments.train` with its preset, shortened to EPOCHS_<MODEL> epochs
# (the cosine schedule spans them), and a wall-clock budget BUDGET_S per model: past it the run
# gets SIGTERM, saves a checkpoint and stops (rerunning resumes it). Test accuracy is that of the
# checkpoint selected on the 5,000 held-out validation images.
# The runs use the on-device input pipeline (--config.data.on_device=True, experiments/
# device_pipeline.py: the images on the GPU, lax.scan over config.steps_per_dispatch steps).
#
# What fits, measured on one H200 (2026-12-04, BENCHMARKS.md): bin_vgg16 trains at about 33,000
# images/s at batch 128 (1.35 s per 45,000-image epoch; validation every epoch adds about 0.6 s),
# and start-up (data decode, compilation) takes about 30 s. So 100 epochs take 230 s in all, and
# the 400-epoch preset (about 14 minutes) does not fit one 10-minute command. vgg16 has not been
# timed there (same MACs, float layers). In that run evaluations and checkpoint saves took about a
# third of the loop (66 of 201 s, inferred from the images/s); each summary line now says where the
# loop's time went ("seconds": evaluation, checkpoint_saves, training). To evaluate (and so
# checkpoint) less often: EXTRA_FLAGS=--config.eval_every_steps=1755 (5 epochs at batch 128).
# Environment: PYTHON (a python with jax + a CUDA plugin and the `experiments` extra: absl-py,
# ml-collections, orbax-checkpoint, clu, pillow, scikit-learn; default .venv/bin/python if it sees a
# GPU, else python3), EPOCHS_VGG16 (default 30), EPOCHS_BIN_VGG16 (default 30), BUDGET_S (270),
# BATCH_SIZE (128), EXTRA_FLAGS (more --config.* overrides), MODELS (default "vgg16 bin_vgg16"),
# ALLOW_CPU=1 (run without a GPU: how tests/experiments/test_gpu_scripts.py checks this script on tiny runs).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUTDIR=${1:-${OUT:-runs/gpu}}
BUDGET_S=${BUDGET_S:-270}
BATCH_SIZE=${BATCH_SIZE:-128}
EXTRA_FLAGS=${EXTRA_FLAGS:-}
export PYTHONUNBUFFERED=1
if [ -z "${PYTHON:-}" ]; then
  PYTHON=python3
  if [ -x .venv/bin/python ] && .venv/bin/python -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')" 2>/dev/null; then
    PYTHON=.venv/bin/python
  fi
fi
mkdir -p "$OUTDIR"

MODELS=${MODELS:-vgg16 bin_vgg16}
export GPU_RUN_ALLOW_CPU=${ALLOW_CPU:-}

# A machine without network (the lent H200: no ml_collections there): wheels carried in .whl/
# (experiments/gpu/prepare_wheels.sh) for the modules this python lacks, and only for those.
source experiments/gpu/carried_wheels.sh
install_carried_wheels "$PYTHON" ml_collections:ml_collections flax.nnx:flax optax:optax \
  orbax.checkpoint:orbax_checkpoint

"$PYTHON" - <<'PY' || exit 1
import importlib.util, sys
missing = [m for m in ("jax", "flax.nnx", "optax", "absl", "ml_collections", "orbax.checkpoint",
                       "PIL", "sklearn") if importlib.util.find_spec(m.split(".")[0]) is None]
if missing:
  sys.exit(f"gpu/run.sh: {sys.executable} lacks {', '.join(missing)} (pip install -e '.[experiments]')")
import os
import jax
if jax.default_backend() != "gpu" and not os.environ.get("GPU_RUN_ALLOW_CPU"):
  sys.exit(f"gpu/run.sh: no GPU visible to jax ({jax.devices()}); set PYTHON to a CUDA-enabled python")
print("devices:", jax.devices(), "jax", jax.__version__)
PY
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || true

for model in $MODELS; do
  var="EPOCHS_$(echo "$model" | tr '[:lower:]' '[:upper:]')"
  epochs=${!var:-30}
  echo "=== $model: $epochs epochs, batch $BATCH_SIZE, budget ${BUDGET_S}s"
  start=$(date +%s)
  # shellcheck disable=SC2086
  timeout --signal=TERM --kill-after=60 "$BUDGET_S" "$PYTHON" -m experiments.train \
    --model="$model" --workdir="$OUTDIR/$model" --config.num_epochs="$epochs" \
    --config.batch_size="$BATCH_SIZE" --config.eval_test_during_training=False \
    --config.log_every_steps=100 --config.eval_batch_size=1000 --config.data.on_device=True \
    $EXTRA_FLAGS \
    > "$OUTDIR/$model.log" 2>&1
  status=$?
  tail -3 "$OUTDIR/$model.log"
  "$PYTHON" - "$OUTDIR/$model" "$status" "$(( $(date +%s) - start ))" <<'PY'
import json, os, statistics, sys
workdir, status, wall = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rates, val = [], None
if os.path.exists(os.path.join(workdir, "metrics.jsonl")):  # absent when training never started
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      r = json.loads(line)
      rates += [r["images_per_second"]] if "images_per_second" in r else []
      val = r.get("best_val_accuracy", val)
results = {}
if os.path.exists(os.path.join(workdir, "results.json")):
  results = json.load(open(os.path.join(workdir, "results.json")))
print(json.dumps({"model": os.path.basename(workdir), "exit_status": status, "wall_seconds": wall,
                  "steps": results.get("last_step"), "interrupted_by": results.get("interrupted_by"),
                  "test_accuracy": results.get("test_accuracy"), "best_val_accuracy": val,
                  "median_train_images_per_second": statistics.median(rates) if rates else None,
                  "seconds": results.get("seconds")}))
PY
done
