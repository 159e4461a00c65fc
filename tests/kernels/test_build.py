"""The build chain: the extension exists, and the CUDA kernels are compiled wherever nvcc is."""

import shutil

import jax
import numpy as np
import pytest

import xnorjax
from xnorjax import _native
from xnorjax.ops import pack_bits
from helpers.markers import requires_extension

has_gpu = jax.default_backend() == "gpu"


@requires_extension
def test_cpu_targets_registered():
  assert "xnorjax_pack_bits" in xnorjax.require_extension().registrations()


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no CUDA compiler on this machine")
def test_cuda_kernels_compiled_where_nvcc_exists():
  # CMake compiles ffi/cuda/*.cu whenever it finds nvcc: a missing module means the CUDA build was
  # skipped or broken, which must fail CI even though no GPU is here to run the kernels.
  assert _native.cuda_kernels_available(), "nvcc is installed but xnorjax._ffi_cuda was not built"
  from xnorjax import _ffi_cuda  # pylint: disable=g-import-not-at-top
  assert set(_ffi_cuda.registrations()) >= {"xnorjax_pack_bits"}


@pytest.mark.skipif(not has_gpu, reason="needs a CUDA GPU")
def test_pack_bits_on_gpu_matches_cpu(rng):
  x = rng.standard_normal((7, 300)).astype(np.float32)
  x[0, :10] = 0.0
  x_gpu = jax.device_put(x, jax.devices("gpu")[0])
  gpu = jax.jit(lambda v: pack_bits(v, implementation="kernel"))(x_gpu)
  assert "xnorjax_pack_bits" in jax.jit(lambda v: pack_bits(v, implementation="kernel")).lower(x_gpu).as_text()
  cpu = pack_bits(x, implementation="reference")
  np.testing.assert_array_equal(np.asarray(gpu), np.asarray(cpu))
