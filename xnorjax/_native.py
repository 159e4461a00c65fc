"""Loads the compiled extension (`xnorjax._ffi`) and registers its FFI targets with XLA.

The package works without the extension (every pure-JAX feature); asking for a packed kernel then
raises `ExtensionNotBuiltError`, whose message says how to build it.
"""

from __future__ import annotations

import functools

import jax

BUILD_HINT = (
    "The xnorjax C++ extension (xnorjax._ffi) is not built. Build it with `make install` "
    "(or `pip install --no-build-isolation -e .` with scikit-build-core and nanobind installed), "
    "which compiles ffi/ with CMake against the installed jaxlib's XLA FFI headers."
)


class ExtensionNotBuiltError(ImportError):
  """Raised when a packed kernel is requested but the C++ extension is unavailable."""


@functools.cache
def _load():
  """Imports the extension once and registers its CPU (and, if built, CUDA) targets."""
  try:
    from xnorjax import _ffi  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    return None, f"{BUILD_HINT} (import failed: {e})"
  for name, capsule in _ffi.registrations().items():
    jax.ffi.register_ffi_target(name, capsule, platform="cpu")
  try:
    from xnorjax import _ffi_cuda  # pylint: disable=g-import-not-at-top
  except ImportError:
    pass
  else:
    for name, capsule in _ffi_cuda.registrations().items():
      jax.ffi.register_ffi_target(name, capsule, platform="CUDA")
  return _ffi, None


def extension_available() -> bool:
  """True when the C++ extension is built and its kernels are registered."""
  return _load()[0] is not None


def cuda_kernels_available() -> bool:
  """True when the CUDA kernels were compiled into the extension build."""
  if not extension_available():
    return False
  try:
    from xnorjax import _ffi_cuda  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  return True


def require_extension():
  """Returns the extension module, or raises `ExtensionNotBuiltError` saying how to build it."""
  module, error = _load()
  if module is None:
    raise ExtensionNotBuiltError(error)
  return module
