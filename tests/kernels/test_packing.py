"""pack_bits / unpack_bits against an obviously-right numpy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import xnorjax
from xnorjax.ops import pack_bits, packed_words, unpack_bits
from helpers.markers import requires_extension


def numpy_pack_bits(x: np.ndarray, axis: int) -> np.ndarray:
  """Reference: one bit at a time, bit j % 32 of word j // 32, zero tail bits."""
  bits = np.moveaxis(np.asarray(x) >= 0 if x.dtype != bool else x, axis, -1)
  n = bits.shape[-1]
  out = np.zeros(bits.shape[:-1] + (packed_words(n),), dtype=np.uint32)
  for j in range(n):
    out[..., j // 32] |= bits[..., j].astype(np.uint32) << np.uint32(j % 32)
  return np.moveaxis(out, -1, axis)


SHAPES_AXES = [((5,), 0), ((2, 31), -1), ((3, 32), 1), ((4, 33), -1), ((2, 7, 96), -1),
               ((3, 70, 2), 1), ((1, 1, 1, 129), 3), ((6, 5, 4, 300), -1), ((64, 3, 3, 5), 0)]


IMPLEMENTATIONS = ["reference", pytest.param("kernel", marks=requires_extension)]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("shape,axis", SHAPES_AXES)
def test_pack_bits_matches_numpy(rng, implementation, shape, axis):
  x = rng.standard_normal(shape).astype(np.float32)
  x.flat[:: max(1, x.size // 7)] = 0.0  # exact zeros pack as +1
  got = jax.jit(lambda v: pack_bits(v, axis=axis, implementation=implementation))(x)
  np.testing.assert_array_equal(np.asarray(got), numpy_pack_bits(x, axis))


@requires_extension
def test_ffi_is_a_custom_call_and_auto_agrees(rng):
  x = rng.standard_normal((4, 100)).astype(np.float32)
  ffi = jax.jit(lambda v: pack_bits(v, implementation="kernel"))
  assert "xnorjax_pack_bits" in ffi.lower(x).as_text()
  assert "xnorjax_pack_bits" not in jax.jit(pack_bits).lower(x).as_text()  # auto: fusable XLA
  np.testing.assert_array_equal(np.asarray(jax.jit(pack_bits)(x)), np.asarray(ffi(x)))
  np.testing.assert_array_equal(np.asarray(ffi(x)), numpy_pack_bits(x, -1))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32, jnp.bool_])
def test_dtypes(rng, dtype):
  x = rng.standard_normal((3, 45)).astype(np.float32)
  xd = jnp.asarray(x > 0) if dtype == jnp.bool_ else jnp.asarray(x, dtype)
  ref = numpy_pack_bits(np.asarray(xd) if dtype == jnp.bool_ else np.asarray(xd.astype(jnp.float32)), -1)
  np.testing.assert_array_equal(np.asarray(pack_bits(xd)), ref)


def test_tail_bits_are_zero(rng):
  x = np.abs(rng.standard_normal((2, 40))).astype(np.float32)  # all +1
  words = np.asarray(pack_bits(x))
  assert words[0, 0] == 0xFFFFFFFF and words[0, 1] == 0xFF


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_vmap(rng, implementation):
  x = rng.standard_normal((5, 3, 70)).astype(np.float32)
  got = jax.vmap(lambda v: pack_bits(v, implementation=implementation))(x)
  np.testing.assert_array_equal(np.asarray(got), numpy_pack_bits(x, -1))


@pytest.mark.parametrize("shape,axis", SHAPES_AXES)
def test_unpack_roundtrip(rng, shape, axis):
  x = rng.standard_normal(shape).astype(np.float32)
  words = pack_bits(x, axis=axis)
  back = unpack_bits(words, shape[axis], axis=axis)
  np.testing.assert_array_equal(np.asarray(back), np.where(x >= 0, 1.0, -1.0))


def test_bad_input():
  with pytest.raises(TypeError, match="x must be a floating-point or bool"):
    pack_bits(jnp.ones((3, 4), jnp.int32))
  with pytest.raises(ValueError, match="axis=2 is out of range"):
    pack_bits(jnp.ones((3, 4)), axis=2)
  with pytest.raises(ValueError, match="scalar"):
    pack_bits(jnp.float32(1.0))
  with pytest.raises(ValueError, match="length 0"):
    pack_bits(jnp.ones((3, 0)))
  with pytest.raises(ValueError, match="implementation must be one of"):
    pack_bits(jnp.ones((3, 4)), implementation="fast")
  with pytest.raises(TypeError, match="words must be a uint32"):
    unpack_bits(jnp.ones((3, 4)), 4)
  with pytest.raises(ValueError, match="n=33 needs 2 words"):
    unpack_bits(jnp.ones((3, 3), jnp.uint32), 33)


def test_missing_extension_message(monkeypatch):
  from xnorjax import _native
  monkeypatch.setattr(_native, "_load", lambda: (None, _native.BUILD_HINT))
  with pytest.raises(xnorjax.ExtensionNotBuiltError, match="make install"):
    pack_bits(jnp.ones((2, 3)), implementation="kernel")
  # "auto" falls back to XLA and still gives the right bits.
  np.testing.assert_array_equal(np.asarray(pack_bits(jnp.ones((2, 3)))), [[7], [7]])
