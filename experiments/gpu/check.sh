#!/usr/bin/env bash
# The CUDA kernels on a machine with an NVIDIA GPU and nvcc, in one run of at most 9 minutes
# (GPU_CHECK_TOTAL_S, default 540 s):
#   1. build xnorjax with its CUDA kernels (pip editable, no network; CMake directly if pip fails),
#   2. experiments/gpu/check.py: exactness against XLA on every bin_vgg16 layer shape and odd
#      shapes, on every CUDA path, then xnor_conv timed against XLA's bfloat16 and int8 convs at
#      batch 128 and 1 (table in OUTDIR/gpu_check.{txt,json}),
#   3. device time per kernel from the profiler trace (experiments/gpu/kernel_times.py) and
#      Nsight Compute on two layers' CUDA kernels (OUTDIR/ncu.txt),
#   4. the GPU tests (tests/kernels/test_cuda_kernels.py, tests/kernels/test_build.py, tests/kernels/test_xnor_ops.py) in
#      the time left, then the short table again, last.
#
# Usage: experiments/gpu/check.sh [OUTDIR]        (default: $OUT, else /tmp/xnorjax_gpu_check)
# Environment: PYTHON (default python3: the one with jax and a CUDA plugin), SKIP_BUILD=1,
#   GPU_CHECK_ARGS (extra flags for gpu_check.py, e.g. --smoke to try the script without a GPU),
#   XNORJAX_CUDA_ARCHITECTURES (default 90a-real: the H100 / H200 code only, to build faster;
#   CI and `make install` build 80-real;90-real;90a-real;90-virtual).
# The machine needs no network: it uses its own jax (any version with jax.ffi and a CUDA plugin;
# the project pins 0.10.2, whose CUDA wheels are too large to carry, see prepare_wheels.sh)
# and installs wheels from .whl/ only for modules it lacks.
set -uo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
OUTDIR=${1:-${OUT:-/tmp/xnorjax_gpu_check}}
TOTAL_S=${GPU_CHECK_TOTAL_S:-540}
mkdir -p "$OUTDIR"
START=$(date +%s)
elapsed() { echo $(( $(date +%s) - START )); }
log() { echo "[gpu_check $(elapsed)s] $*"; }
export PYTHONUNBUFFERED=1

log "environment"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>&1 | tail -2
nvcc --version 2>&1 | tail -1
source experiments/gpu/carried_wheels.sh
install_carried_wheels "$PYTHON" flax.nnx:flax optax:optax
"$PYTHON" -c "import jax; print('jax', jax.__version__, jax.devices())" || { log "jax is not importable"; exit 1; }

check_extension() {
  "$PYTHON" -c "
import xnorjax
from xnorjax import _native
xnorjax.require_extension()
assert _native.cuda_kernels_available(), 'xnorjax._ffi_cuda is not built'
from xnorjax import _ffi_cuda
print('CUDA targets:', sorted(_ffi_cuda.registrations()))"
}

if [ -z "${SKIP_BUILD:-}" ]; then
  log "build (log: $OUTDIR/build.log)"
  export CMAKE_ARGS="-DXNORJAX_CUDA_ARCHITECTURES=${XNORJAX_CUDA_ARCHITECTURES:-90a-real} ${CMAKE_ARGS:-}"
  export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
  if ! { timeout 300 "$PYTHON" -m pip install --no-index --no-deps --no-build-isolation -e . \
         > "$OUTDIR/build.log" 2>&1 && check_extension; }; then
    tail -25 "$OUTDIR/build.log"
    log "pip build failed; building with CMake directly"
    NB_DIR=$("$PYTHON" -m nanobind --cmake_dir)
    if timeout 300 cmake -S . -B build/gpu_check -G Ninja -DCMAKE_BUILD_TYPE=Release \
        -DPython_EXECUTABLE="$(command -v "$PYTHON")" -Dnanobind_DIR="$NB_DIR" $CMAKE_ARGS \
        >> "$OUTDIR/build.log" 2>&1 && timeout 300 cmake --build build/gpu_check \
        >> "$OUTDIR/build.log" 2>&1; then
      cp build/gpu_check/*.so xnorjax/
    else
      tail -40 "$OUTDIR/build.log"; log "build failed"; exit 1
    fi
  fi
fi
check_extension || { log "extension not importable"; exit 1; }

# The sweep and the timing first (the table is what a one-shot run must not lose), the tests in the
# time left; the table is printed again at the very end.
BUDGET=$(( (TOTAL_S - $(elapsed)) * 40 / 100 ))
[ "$BUDGET" -lt 60 ] && BUDGET=60
log "exactness sweep and timing (budget ${BUDGET}s)"
timeout $(( BUDGET + 60 )) "$PYTHON" -m experiments.gpu.check --out "$OUTDIR" --budget_s "$BUDGET" \
  ${GPU_CHECK_ARGS:-} 2>&1 | tee "$OUTDIR/gpu_check.log" | grep -v "^  {" | sed '/gpu_check table/,$d' \
  | head -c 20000
CHECK_RC=${PIPESTATUS[0]}

# Device time per kernel (the profiler's trace), then Nsight Compute on two layers' CUDA kernels:
# where the packed conv's time goes, without launch and dispatch costs.
log "kernel times from the profiler trace"
timeout 150 "$PYTHON" -m experiments.gpu.kernel_times --out "$OUTDIR" 2>&1 | grep -v "^  {" | tail -20
if command -v ncu > /dev/null; then
  log "ncu on the CUDA kernels of 512->512@2 and 128->128@16, batch 128 (log: $OUTDIR/ncu.txt)"
  timeout 120 ncu --clock-control none -k regex:'MmaKernel|PrepassKernel' --launch-count 8 \
    --section SpeedOfLight --section LaunchStats --section Occupancy \
    --section MemoryWorkloadAnalysis "$PYTHON" -m experiments.gpu.kernel_times --calls=1 \
    --no_trace --layers 512,512,2,128 128,128,16,128 > "$OUTDIR/ncu.txt" 2>&1
  grep -E "^  [A-Za-z].*(Kernel|kernel)|Duration|SM\] Throughput|Memory Throughput|Achieved Occupancy|Registers Per|Grid Size|==ERROR|==WARNING" \
    "$OUTDIR/ncu.txt" | cut -c1-160 | head -60
fi

TEST_S=$(( TOTAL_S - $(elapsed) - 10 ))
[ "$TEST_S" -lt 30 ] && TEST_S=30
log "GPU tests (timeout ${TEST_S}s; log: $OUTDIR/pytest.log)"
# -v: the log names every test as it ends, so a run cut by the timeout still says which failed.
timeout "$TEST_S" "$PYTHON" -m pytest -v -p no:cacheprovider -o addopts="" -rfEs --tb=line \
  tests/kernels/test_cuda_kernels.py tests/kernels/test_build.py tests/kernels/test_xnor_ops.py \
  > "$OUTDIR/pytest.log" 2>&1
PYTEST_RC=$?
grep -E "(FAILED|ERROR)( |$)| passed| failed" "$OUTDIR/pytest.log" | cut -c1-240 | tail -25
if [ "$PYTEST_RC" -eq 124 ]; then
  log "pytest cut at ${TEST_S}s after $(grep -cE ' (PASSED|FAILED|SKIPPED|ERROR)' \
    "$OUTDIR/pytest.log") tests"
fi

log "done: pytest rc=$PYTEST_RC, gpu_check rc=$CHECK_RC (0 = all exact)"
[ -f "$OUTDIR/gpu_check.txt" ] && cat "$OUTDIR/gpu_check.txt"
exit $(( PYTEST_RC != 0 || CHECK_RC != 0 ))
