"""ffi/conv_geometry.h (through xnorjax._ffi.geometry) against XLA and brute force.

The CUDA kernels use the same header, so these CPU tests cover their geometry too.
"""

import jax
import numpy as np
import pytest

import xnorjax
from xnorjax.ops import pack_bits
from helpers.markers import requires_extension

pytestmark = requires_extension


@pytest.fixture
def geometry():
  return xnorjax.require_extension().geometry


def _lax_output_size(size, kernel, stride, pad_lo, pad_hi):
  x = jax.ShapeDtypeStruct((1, size, 1), np.float32)
  w = jax.ShapeDtypeStruct((kernel, 1, 1), np.float32)
  out = jax.eval_shape(
      lambda a, b: jax.lax.conv_general_dilated(a, b, (stride,), [(pad_lo, pad_hi)],
                                                dimension_numbers=("NWC", "WIO", "NWC")), x, w)
  return out.shape[1]


def test_conv_output_size_matches_lax(geometry, rng):
  for _ in range(60):
    kernel = int(rng.integers(1, 8))
    stride = int(rng.integers(1, 3))
    pad_lo, pad_hi = (int(p) for p in rng.integers(0, kernel, size=2))
    size = int(rng.integers(max(1, kernel - pad_lo - pad_hi), 20))
    assert geometry.conv_output_size(size, kernel, stride, pad_lo, pad_hi) == _lax_output_size(
        size, kernel, stride, pad_lo, pad_hi)
  assert geometry.conv_output_size(2, 5, 1, 1, 1) == 0  # padded input shorter than the kernel


def test_inside_taps_match_brute_force(geometry, rng):
  for _ in range(60):
    kernel = int(rng.integers(1, 8))
    stride = int(rng.integers(1, 3))
    pad_lo, pad_hi = (int(p) for p in rng.integers(0, kernel, size=2))
    size = int(rng.integers(1, 12))
    for out in range(geometry.conv_output_size(size, kernel, stride, pad_lo, pad_hi)):
      inside = [geometry.tap_inside(geometry.tap_input_index(out, t, stride, pad_lo), size)
                for t in range(kernel)]
      brute = [0 <= out * stride - pad_lo + t < size for t in range(kernel)]
      assert inside == brute
      begin = geometry.inside_tap_begin(out, stride, pad_lo)
      end = geometry.inside_tap_end(out, stride, pad_lo, size, kernel)
      assert [begin <= t < end for t in range(kernel)] == brute
      assert geometry.all_taps_inside(out, stride, pad_lo, size, kernel) == all(brute)


def test_dot_forms_match_numpy(geometry, rng):
  for bits in (1, 7, 32, 33, 100):
    a = rng.choice([-1, 1], size=bits)
    w = rng.choice([-1, 1], size=bits)
    pa, pw = pack_bits(a.astype(np.float32)), pack_bits(w.astype(np.float32))
    popc = lambda words: int(np.unpackbits(np.asarray(words).view(np.uint8)).sum())
    dot = int(a @ w)
    assert geometry.dot_from_xor_popcount(bits, popc(pa ^ pw)) == dot
    assert geometry.dot_from_and_popcount(bits, popc(pa), popc(pw), popc(pa & pw)) == dot
    assert geometry.sum_from_popcount(bits, popc(pw)) == int(w.sum())


def test_pad_correction(geometry, rng):
  # A 1-D conv tap set where some taps read padding: the dot computed with the padding assumed
  # to hold `assumed` plus the correction equals the dot with the real pad value.
  w = rng.choice([-1, 1], size=9)
  outside = rng.random(9) < 0.4
  x = rng.choice([-1, 1], size=9)
  for assumed in (-1, 1):
    for pad_value in (-1, 0, 1):
      computed = int(np.where(outside, assumed, x) @ w)
      want = int(np.where(outside, pad_value, x) @ w)
      got = computed + geometry.pad_correction(pad_value, assumed, int(w[outside].sum()))
      assert got == want


def test_words_masks_and_channel_bits(geometry, rng):
  for bits in (1, 31, 32, 33, 64, 65, 200):
    words = geometry.packed_words(bits)
    assert words == -(-bits // 32)
    ones = np.asarray(pack_bits(np.ones(bits, np.float32)))
    minus = np.asarray(pack_bits(-np.ones(bits, np.float32)))
    for word in range(words):
      assert geometry.tail_mask(bits, word) == ones[word]
      assert geometry.constant_word(1, bits, word) == ones[word]
      assert geometry.constant_word(-1, bits, word) == minus[word]
    channel = int(rng.integers(0, bits))
    onehot = -np.ones(bits, np.float32)
    onehot[channel] = 1.0
    packed = np.asarray(pack_bits(onehot))
    assert packed[geometry.word_of_channel(channel)] == np.uint32(1) << geometry.bit_of_channel(
        channel)
