"""Bad input to the public ops and layers: a ValueError / TypeError naming the argument before any
kernel runs, or a documented result (NaN signs, empty batches); never a crash.

Covers `xnorjax.ops.pack_bits`, `xnor_conv`, `xnor_dense`, `conv2d`, `xnorjax.nn.BinaryConv`,
`BinaryDense`, the quantizers and `xnorjax.deploy.load`, on both the kernel ("kernel") and the
pure-JAX ("reference") paths.
"""

import json
import os

from flax import nnx
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import jax.numpy as jnp
import numpy as np
import pytest

from helpers.markers import requires_extension
from xnorjax import deploy
from xnorjax import ops
from xnorjax import quantizers
from xnorjax.nn import BinaryConv
from xnorjax.nn import BinaryDense

IMPLEMENTATIONS = [pytest.param("kernel", marks=requires_extension), "reference"]
BINARY = {"input_quantizer": "ste_sign", "kernel_quantizer": "magnitude_aware_sign"}
FORWARDS = [pytest.param("packed", marks=requires_extension), "float"]


def f32(*shape):
  return jnp.ones(shape, jnp.float32)


def _packed(*shape, axis=-1):
  return ops.pack_bits(f32(*shape), axis=axis)


# (call, error type, words the message must contain: the argument it names).
OP_CASES = {
    "pack_bits int32": (lambda i: ops.pack_bits(jnp.ones((3, 4), jnp.int32), implementation=i),
                        TypeError, "x must be a floating-point or bool"),
    "pack_bits complex": (lambda i: ops.pack_bits(jnp.ones(3, jnp.complex64), implementation=i),
                          TypeError, "x must be a floating-point or bool"),
    "pack_bits scalar": (lambda i: ops.pack_bits(jnp.float32(1), implementation=i), ValueError,
                         "x must have at least one axis"),
    "pack_bits float axis": (lambda i: ops.pack_bits(f32(3, 4), axis=1.0, implementation=i),
                             TypeError, "axis must be an int"),
    "pack_bits axis out of range": (lambda i: ops.pack_bits(f32(3, 4), axis=2, implementation=i),
                                    ValueError, "axis=2 is out of range"),
    "pack_bits empty axis": (lambda i: ops.pack_bits(f32(3, 0), implementation=i), ValueError,
                             "length 0 along axis"),
    "xnor_conv rank 3": (lambda i: ops.xnor_conv(f32(4, 4, 3), f32(3, 3, 3, 8), implementation=i),
                         ValueError, "x must have rank 4"),
    "xnor_conv kernel rank 2": (lambda i: ops.xnor_conv(f32(1, 4, 4, 3), f32(3, 8),
                                                        implementation=i),
                                ValueError, "kernel must have rank 4"),
    "xnor_conv int8": (lambda i: ops.xnor_conv(jnp.ones((1, 4, 4, 3), jnp.int8), f32(3, 3, 3, 8),
                                               implementation=i), TypeError, "x must be a float"),
    "xnor_conv batch 0": (lambda i: ops.xnor_conv(f32(0, 4, 4, 3), f32(3, 3, 3, 8),
                                                  implementation=i),
                          ValueError, "x has a zero-size axis"),
    "xnor_conv height 0": (lambda i: ops.xnor_conv(f32(1, 0, 4, 3), f32(3, 3, 3, 8),
                                                   implementation=i),
                           ValueError, "x has a zero-size axis"),
    "xnor_conv 0 outputs": (lambda i: ops.xnor_conv(f32(1, 4, 4, 3), f32(3, 3, 3, 0),
                                                    implementation=i),
                            ValueError, "kernel has a zero-size axis"),
    "xnor_conv channels differ": (lambda i: ops.xnor_conv(f32(1, 4, 4, 3), f32(3, 3, 5, 8),
                                                          implementation=i),
                                  ValueError, "channels mismatch"),
    "xnor_conv packed width differs": (lambda i: ops.xnor_conv(_packed(1, 4, 4, 40),
                                                               f32(3, 3, 3, 8), implementation=i),
                                       ValueError, "packed x has 2 words"),
    "xnor_conv both packed, no channels": (
        lambda i: ops.xnor_conv(_packed(1, 4, 4, 40), _packed(3, 3, 40, 8, axis=-2),
                                implementation=i), ValueError, "channels is required"),
    "xnor_conv channels beyond the words": (
        lambda i: ops.xnor_conv(_packed(1, 4, 4, 40), _packed(3, 3, 40, 8, axis=-2),
                                channels=100, implementation=i), ValueError, "channels=100 needs"),
    "xnor_conv kernel larger than input": (
        lambda i: ops.xnor_conv(f32(1, 2, 2, 3), f32(3, 3, 3, 8), padding="VALID",
                                implementation=i), ValueError, "smaller than the kernel"),
    "xnor_conv kernel larger than padded input": (
        lambda i: ops.xnor_conv(f32(1, 1, 1, 3), f32(5, 5, 3, 8), padding=1, implementation=i),
        ValueError, "smaller than the kernel"),
    "xnor_conv stride 0": (lambda i: ops.xnor_conv(f32(1, 4, 4, 3), f32(3, 3, 3, 8), strides=0,
                                                   implementation=i), ValueError, "strides"),
    "xnor_conv negative padding": (lambda i: ops.xnor_conv(f32(1, 4, 4, 3), f32(3, 3, 3, 8),
                                                           padding=-1, implementation=i),
                                   ValueError, "padding must be >= 0"),
    "xnor_conv pad_value 2": (lambda i: ops.xnor_conv(f32(1, 4, 4, 3), f32(3, 3, 3, 8),
                                                      pad_value=2.0, implementation=i),
                              ValueError, "pad_value must be 0, -1 or +1"),
    "xnor_conv scale shape": (lambda i: ops.xnor_conv(f32(1, 4, 4, 3), f32(3, 3, 3, 8),
                                                      scale=f32(5), implementation=i),
                              ValueError, "scale must be a scalar or have shape (8,)"),
    "xnor_dense scalar": (lambda i: ops.xnor_dense(jnp.float32(1), f32(3, 4), implementation=i),
                          ValueError, "x must have rank >= 1"),
    "xnor_dense kernel rank 3": (lambda i: ops.xnor_dense(f32(2, 3), f32(3, 4, 1),
                                                          implementation=i),
                                 ValueError, "kernel must have rank 2"),
    "xnor_dense features differ": (lambda i: ops.xnor_dense(f32(2, 3), f32(5, 4), implementation=i),
                                   ValueError, "features mismatch"),
    "xnor_dense batch 0": (lambda i: ops.xnor_dense(f32(0, 3), f32(3, 4), implementation=i),
                           ValueError, "x has a zero-size axis"),
    "xnor_dense 0 features": (lambda i: ops.xnor_dense(f32(2, 0), f32(0, 4), implementation=i),
                              ValueError, "x has a zero-size axis"),
    "xnor_dense uint8": (lambda i: ops.xnor_dense(jnp.ones((2, 3), jnp.uint8), f32(3, 4),
                                                  implementation=i), TypeError, "x must be a float"),
    "xnor_dense both packed, no features": (
        lambda i: ops.xnor_dense(_packed(2, 40), _packed(40, 4, axis=0), implementation=i),
        ValueError, "features is required"),
    "xnor_dense unknown implementation": (lambda i: ops.xnor_dense(f32(2, 3), f32(3, 4),
                                                                   implementation="cuda"),
                                          ValueError, "implementation"),
    "xnor_dense unknown isa": (lambda i: ops.xnor_dense(f32(2, 3), f32(3, 4), isa="avx9",
                                                         implementation=i), ValueError, "isa"),
}


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("case", list(OP_CASES))
def test_op_rejects_bad_input_naming_the_argument(case, implementation):
  call, error, words = OP_CASES[case]
  with pytest.raises(error, match=_literal(words)):
    call(implementation)


def _literal(words: str) -> str:
  import re  # pylint: disable=g-import-not-at-top
  return re.escape(words)


FLOAT_CONV_CASES = {
    "rank 3": (lambda: ops.conv2d(f32(4, 4, 3), f32(3, 3, 3, 8)), ValueError, "x must be a rank-4"),
    "int32": (lambda: ops.conv2d(jnp.ones((1, 4, 4, 3), jnp.int32), f32(3, 3, 3, 8)), TypeError,
              "x must be a floating-point"),
    "channels differ": (lambda: ops.conv2d(f32(1, 4, 4, 3), f32(3, 3, 5, 8)), ValueError,
                        "x has 3 channels but kernel expects 5"),
    "kernel larger than input": (lambda: ops.conv2d(f32(1, 2, 2, 3), f32(3, 3, 3, 8),
                                                    padding="VALID"),
                                 ValueError, "larger than the padded input"),
    "kernel larger than padded input": (lambda: ops.conv2d(f32(1, 1, 1, 3), f32(5, 5, 3, 8),
                                                           padding=1),
                                        ValueError, "larger than the padded input"),
}


@pytest.mark.parametrize("case", list(FLOAT_CONV_CASES))
def test_conv2d_rejects_bad_input_naming_the_argument(case):
  call, error, words = FLOAT_CONV_CASES[case]
  with pytest.raises(error, match=_literal(words)):
    call()


def test_float_ops_give_empty_results_for_an_empty_batch():
  """Documented results: batch 0 through the float conv and packing is an empty array of the
  right shape (the XNOR kernels reject it instead, see OP_CASES)."""
  assert ops.conv2d(f32(0, 4, 4, 3), f32(3, 3, 3, 8)).shape == (0, 4, 4, 8)
  assert ops.pack_bits(f32(0, 40)).shape == (0, 2)


LAYER_CASES = {
    "BinaryConv channels differ": (lambda fw: BinaryConv(3, 8, 3, implementation=fw, rngs=nnx.Rngs(0),
                                                         **BINARY)(f32(1, 4, 4, 5)),
                                   ValueError, "inputs have 5 channels"),
    "BinaryConv rank 3": (lambda fw: BinaryConv(3, 8, 3, implementation=fw, rngs=nnx.Rngs(0),
                                                **BINARY)(f32(4, 4, 3)),
                          ValueError, "inputs must have rank 4"),
    "BinaryConv int32 input": (lambda fw: BinaryConv(3, 8, 3, implementation=fw, rngs=nnx.Rngs(0),
                                                     **BINARY)(jnp.ones((1, 4, 4, 3), jnp.int32)),
                               TypeError, "inputs must be a floating-point"),
    "BinaryConv kernel larger than input": (
        lambda fw: BinaryConv(3, 8, 5, padding="VALID", implementation=fw, rngs=nnx.Rngs(0),
                              **BINARY)(f32(1, 2, 2, 3)), ValueError, "kernel"),
    "BinaryDense features differ": (lambda fw: BinaryDense(3, 8, implementation=fw, rngs=nnx.Rngs(0),
                                                           **BINARY)(f32(2, 5)),
                                    ValueError, "inputs must end in in_features=3"),
    "BinaryDense scalar": (lambda fw: BinaryDense(3, 8, implementation=fw, rngs=nnx.Rngs(0),
                                                  **BINARY)(jnp.float32(1)),
                           ValueError, "inputs must end in in_features=3"),
    "BinaryConv 0 in_features": (lambda fw: BinaryConv(0, 8, 3, implementation=fw, rngs=nnx.Rngs(0),
                                                       **BINARY),
                                 ValueError, "in_features must be a positive int"),
    "BinaryConv kernel_size 0": (lambda fw: BinaryConv(3, 8, 0, implementation=fw, rngs=nnx.Rngs(0),
                                                       **BINARY),
                                 ValueError, "kernel_size must be a positive int"),
    "BinaryDense -1 out_features": (lambda fw: BinaryDense(3, -1, implementation=fw, rngs=nnx.Rngs(0),
                                                           **BINARY),
                                    ValueError, "out_features must be a positive int"),
    "BinaryDense unknown implementation": (lambda fw: BinaryDense(3, 8, implementation="gpu", rngs=nnx.Rngs(0),
                                                           **BINARY),
                                    ValueError, "implementation must be one of"),
    "BinaryDense unknown quantizer": (lambda fw: BinaryDense(3, 8, implementation=fw, rngs=nnx.Rngs(0),
                                                             input_quantizer="sign2"),
                                      ValueError, "input_quantizer='sign2' is not a known"),
}


@pytest.mark.parametrize("forward", FORWARDS)
@pytest.mark.parametrize("case", list(LAYER_CASES))
def test_layer_rejects_bad_input_naming_the_argument(case, forward):
  call, error, words = LAYER_CASES[case]
  with pytest.raises(error, match=_literal(words)):
    call(forward)


QUANTIZER_CASES = {
    "ste_sign int32": (lambda: quantizers.ste_sign(jnp.ones(3, jnp.int32)), TypeError,
                       "x must be a floating-point"),
    "ste_sign negative clip": (lambda: quantizers.ste_sign(f32(3), clip_value=-1.0), ValueError,
                               "clip_value must be positive"),
    "approx_sign int32": (lambda: quantizers.approx_sign(jnp.ones(3, jnp.int32)), TypeError,
                          "x must be a floating-point"),
    "magnitude_aware_sign rank 1": (lambda: quantizers.magnitude_aware_sign(f32(3)), ValueError,
                                    "w must have rank >= 2"),
    "magnitude_aware_sign gradient": (lambda: quantizers.magnitude_aware_sign(f32(3, 3),
                                                                              gradient="nope"),
                                      ValueError, "gradient must be one of"),
    "get unknown name": (lambda: quantizers.get("nope"), ValueError, "is not a known quantizer"),
    "get an int": (lambda: quantizers.get(3), TypeError, "identifier must be a quantizer name"),
}


@pytest.mark.parametrize("case", list(QUANTIZER_CASES))
def test_quantizer_rejects_bad_input_naming_the_argument(case):
  call, error, words = QUANTIZER_CASES[case]
  with pytest.raises(error, match=_literal(words)):
    call()


SPECIAL = np.array([np.nan, 1.0, -1.0, np.inf, -np.inf, 0.0, -0.0, np.nan], np.float32)
SPECIAL_SIGNS = np.array([-1, 1, -1, 1, -1, 1, 1, -1], np.float32)  # sign(NaN) = -1, sign(-0) = +1


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_nan_and_inf_signs_are_the_documented_ones_on_every_path(implementation):
  """sign(NaN) = -1 (x >= 0 is False), sign(+-inf) = +-1, sign(+-0) = +1: ste_sign, pack_bits and
  the XNOR dense product agree with each other and with the float product of those signs."""
  x = jnp.asarray(SPECIAL)[None]
  np.testing.assert_array_equal(np.asarray(quantizers.ste_sign(x))[0], SPECIAL_SIGNS)
  unpacked = ops.unpack_bits(ops.pack_bits(x, implementation=implementation), SPECIAL.size)
  np.testing.assert_array_equal(np.asarray(unpacked)[0], SPECIAL_SIGNS)
  w = np.where(np.arange(SPECIAL.size * 3).reshape(SPECIAL.size, 3) % 2 == 0, 1.0, -1.0)
  product = ops.xnor_dense(x, jnp.asarray(w, jnp.float32), implementation=implementation)
  np.testing.assert_array_equal(np.asarray(product)[0], (SPECIAL_SIGNS @ w).astype(np.int32))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_nan_inputs_give_the_same_conv_on_the_packed_and_reference_paths(implementation):
  x = np.ones((1, 5, 5, 8), np.float32)
  x[0, 1:3, 2, ::3] = np.nan
  x[0, 4, 0, 1] = -np.inf
  kernel = np.where(np.arange(3 * 3 * 8 * 4).reshape(3, 3, 8, 4) % 3 == 0, -1.0, 1.0)
  got = ops.xnor_conv(jnp.asarray(x), jnp.asarray(kernel, jnp.float32),
                      implementation=implementation)
  signs = np.where(x >= 0, 1.0, -1.0).astype(np.float32)
  want = ops.conv2d(jnp.asarray(signs), jnp.asarray(kernel, jnp.float32), padding="SAME")
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want).astype(np.int32))


@pytest.mark.parametrize("forward", FORWARDS)
def test_binary_dense_with_nan_inputs_matches_across_forwards(forward):
  """A layer's packed forward and its float forward agree on NaN inputs (both binarize NaN to -1)."""
  layer = BinaryDense(40, 8, implementation="float", rngs=nnx.Rngs(0), **BINARY)
  x = np.linspace(-1, 1, 80, dtype=np.float32).reshape(2, 40)
  x[:, ::7] = np.nan
  want = np.asarray(layer(jnp.asarray(x)))
  layer.implementation = forward
  got = np.asarray(layer(jnp.asarray(x)))
  assert np.isfinite(want).all()
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)


def test_magnitude_aware_sign_nan_poisons_only_its_channel():
  w = jnp.array([[np.nan, 1.0], [2.0, -1.0]], jnp.float32)
  out = np.asarray(quantizers.magnitude_aware_sign(w))
  assert np.isnan(out[:, 0]).all()
  np.testing.assert_array_equal(out[:, 1], [1.0, -1.0])


@settings(max_examples=15, deadline=None)
@given(shape=st.lists(st.integers(0, 3), min_size=0, max_size=5),
       kshape=st.lists(st.integers(0, 3), min_size=0, max_size=5))
def test_xnor_conv_on_random_shapes_raises_a_clear_error_or_runs(shape, kshape):
  """Any shapes: a ValueError (nothing else), or int32 dot products of the expected shape that the
  pure-JAX reference agrees with."""
  x, kernel = jnp.ones(shape, jnp.float32), -jnp.ones(kshape, jnp.float32)
  try:
    got = ops.xnor_conv(x, kernel, padding="SAME")
  except ValueError:
    return
  want = ops.xnor_conv(x, kernel, padding="SAME", implementation="reference")
  assert got.shape == (shape[0], shape[1], shape[2], kshape[3]) and got.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@settings(max_examples=10, deadline=None)
@given(shape=st.lists(st.integers(0, 40), min_size=0, max_size=3),
       axis=st.integers(-4, 3))
def test_pack_bits_on_random_shapes_round_trips_or_raises(shape, axis):
  """Any shape and axis (zero-size axes included): a ValueError, or packed words that unpack to
  the signs."""
  x = jnp.asarray(np.linspace(-1, 1, max(1, int(np.prod(shape)))).astype(np.float32)[
      :int(np.prod(shape))].reshape(shape))
  try:
    words = ops.pack_bits(x, axis=axis)
  except ValueError:
    return
  back = ops.unpack_bits(words, x.shape[axis], axis=axis)
  np.testing.assert_array_equal(np.asarray(back), np.where(np.asarray(x) >= 0, 1.0, -1.0))


def test_deploy_load_rejects_what_is_not_an_export(tmp_path):
  with pytest.raises(FileNotFoundError, match="has no manifest.json"):
    deploy.load(str(tmp_path / "missing"))
  (tmp_path / "a_file").write_text("x")
  with pytest.raises(FileNotFoundError, match="has no manifest.json"):
    deploy.load(str(tmp_path / "a_file"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="has no manifest.json"):
    deploy.load(str(tmp_path / "empty"))
  bad = tmp_path / "bad_json"
  bad.mkdir()
  (bad / "manifest.json").write_text("{not json")
  with pytest.raises(ValueError, match="is not valid JSON"):
    deploy.load(str(bad))
  wrong = tmp_path / "wrong_manifest"
  wrong.mkdir()
  (wrong / "manifest.json").write_text(json.dumps({"format": "something else"}))
  with pytest.raises(ValueError, match="is not an .* manifest"):
    deploy.load(str(wrong))
  assert not os.path.exists(tmp_path / "missing")
