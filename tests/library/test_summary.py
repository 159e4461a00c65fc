"""Tests for xnorjax.summary: counts against the model's own variables, MACs against hand formulas."""

import math

from flax import nnx
import jax

import numpy as np
import pytest

import xnorjax
from xnorjax import models
from xnorjax import nn as xnn
from xnorjax import optim as xnorjax_optim
from xnorjax.summary import ModelSummary
from xnorjax.summary import compute_summary

SMALL_MODELS = [("small_cnn", 0.25), ("bin_small_cnn", 0.25), ("bin_nin", 0.125),
                ("bin_resnet18", 0.125), ("bin_vgg16", 0.125)]


def _sizes(tree):
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("name,width", SMALL_MODELS)
def test_counts_equal_the_models_variables(name, width, rng):
  model = models.create_model(name, num_classes=7, width=width,
                              rngs=nnx.Rngs(int(rng.integers(1 << 30))))
  s = compute_summary(model, (2, 32, 32, 3))
  params = nnx.state(model, nnx.Param)
  assert s.params == _sizes(params)
  assert s.state == _sizes(nnx.state(model, nnx.BatchStat))
  # Binary parameters: exactly the kernels that the optimiser's binary mask selects.
  mask = xnorjax_optim.binary_kernel_mask(model)
  binary = sum(math.prod(p.shape) for p, m in zip(jax.tree.leaves(nnx.as_pure(params)),
                                                   jax.tree.leaves(mask)) if m)
  assert s.binary_params == binary
  assert (s.binary_params > 0) == name.startswith("bin_")
  assert s.memory_float32 == 4 * (s.params + s.state)
  # Every row was called; the last one is the classifier (NIN's 1x1 conv head before its pooling).
  assert all(layer.output_shape is not None for layer in s.layers)
  assert s.layers[-1].output_shape[0] == 2 and s.layers[-1].output_shape[-1] == 7


def test_bin_vgg16_binary_macs_equal_its_layer_table():
  model = models.create_model("bin_vgg16", width=0.25, rngs=nnx.Rngs(0))
  s = compute_summary(model, (1, 32, 32, 3))
  shapes = models.bin_vgg16_conv_shapes(32, 0.25)
  expected = sum(c.input_hw[0] * c.input_hw[1] * 9 * c.in_channels * c.out_channels for c in shapes)
  assert s.binary_macs == expected
  stem = 32 * 32 * 9 * 3 * shapes[0].in_channels
  classifier = shapes[-1].out_channels * 10
  assert s.macs == expected + stem + classifier
  assert s.binary_mac_fraction == pytest.approx(expected / s.macs)
  # Packed: 1 bit per binary weight, one float32 alpha per output channel.
  alphas = sum(c.out_channels for c in shapes)
  assert s.memory_packed == pytest.approx(
      4 * (s.float_params + s.state + alphas) + s.binary_params / 8)
  assert s.compression_factor == pytest.approx(s.memory_float32 / s.memory_packed)


class _Tiny(nnx.Module):
  """A strided XNOR conv, a BNN conv (no alpha), a BWN dense (float input) and a float dense."""

  def __init__(self, rngs):
    self.xnor = xnn.BinaryConv(3, 8, (3, 3), strides=2, input_quantizer="ste_sign",
                               kernel_quantizer="magnitude_aware_sign", rngs=rngs)
    self.bnn = xnn.BinaryConv(8, 4, (2, 3), padding="VALID", input_quantizer="ste_sign",
                              kernel_quantizer="ste_sign", use_bias=True, rngs=rngs)
    self.norm = nnx.BatchNorm(4, rngs=rngs)
    self.bwn = xnn.BinaryDense(4, 6, input_quantizer=None, kernel_quantizer="magnitude_aware_sign",
                               rngs=rngs)
    self.head = nnx.Linear(6, 5, rngs=rngs)

  def __call__(self, x):
    x = self.norm(self.bnn(self.xnor(x)))
    x = self.bwn(x.mean(axis=(1, 2)))
    return self.head(x)


def test_rows_macs_and_memory_of_a_hand_checked_model():
  model = _Tiny(nnx.Rngs(0))
  s = compute_summary(model, (3, 9, 11, 3))
  rows = {layer.path: layer for layer in s.layers}
  assert [layer.path for layer in s.layers] == ["xnor", "bnn", "norm", "bwn", "head"]  # call order
  # 9x11 SAME stride 2 -> 5x6; then 3x3... VALID (2, 3) -> 4x4.
  assert rows["xnor"].output_shape == (3, 5, 6, 8)
  assert rows["bnn"].output_shape == (3, 4, 4, 4)
  assert rows["head"].output_shape == (3, 5)
  assert rows["xnor"].macs == rows["xnor"].binary_macs == 5 * 6 * 3 * 3 * 3 * 8
  assert rows["bnn"].macs == rows["bnn"].binary_macs == 4 * 4 * 2 * 3 * 8 * 4
  assert (rows["bwn"].macs, rows["bwn"].binary_macs) == (4 * 6, 0)  # float input: not binary MACs
  assert (rows["head"].macs, rows["head"].binary_macs) == (6 * 5, 0)
  assert rows["norm"].macs == 0 and rows["norm"].state == 8 and rows["norm"].float_params == 8
  assert (rows["bnn"].binary_params, rows["bnn"].float_params) == (2 * 3 * 8 * 4, 4)
  assert (rows["xnor"].input_bits, rows["xnor"].kernel_bits) == (1, 1)
  assert (rows["bwn"].input_bits, rows["bwn"].kernel_bits) == (32, 1)
  # alpha per output channel for magnitude-aware kernels only.
  assert rows["xnor"].memory_packed == 3 * 3 * 3 * 8 / 8 + 4 * 8
  assert rows["bnn"].memory_packed == 2 * 3 * 8 * 4 / 8 + 4 * 4
  assert rows["bwn"].memory_packed == 4 * 6 / 8 + 4 * 6
  assert rows["head"].memory_packed == rows["head"].memory_float32 == 4 * (6 * 5 + 5)


def test_nin_dropout_blocks_count_as_binary():
  """NIN's dropout blocks binarize the input before their conv (whose input_quantizer is None)."""
  model = models.create_model("bin_nin", width=0.125, rngs=nnx.Rngs(0))
  s = compute_summary(model, (1, 32, 32, 3))
  body_convs = [layer for layer in s.layers if layer.path.startswith("body.") and layer.macs]
  assert len(body_convs) == 7
  assert all(layer.binary_macs == layer.macs for layer in body_convs)
  assert s.binary_macs == sum(layer.macs for layer in body_convs)


def test_summary_prints_and_leaves_the_model_unchanged(rng):
  model = models.create_model("bin_small_cnn", width=0.25, rngs=nnx.Rngs(0))
  model.train()
  before = jax.tree.map(np.array, nnx.state(model))
  printed = []
  s = xnorjax.summary(model, (1, 32, 32, 3), print_fn=printed.append)
  assert isinstance(s, ModelSummary) and printed == [s.to_text()]
  for layer in s.layers:
    assert layer.path in printed[0]
  assert f"{s.params:,}" in printed[0] and "compression factor" in printed[0]
  assert "| Layer |" in s.to_markdown()
  d = s.to_dict()
  assert d["totals"]["params"] == s.params and len(d["layers"]) == len(s.layers)
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.array, nnx.state(model)), before)
  assert not model.stem.bn.use_running_average  # Still in training mode.
  # The module classes' __call__ is restored after the abstract pass.
  assert "__call__" not in xnn.BinaryConvBlock.__dict__ or \
      xnn.BinaryConvBlock.__call__.__qualname__ == "BinaryConvBlock.__call__"
  assert not hasattr(xnn.BinaryConv.__call__, "__wrapped__")


@pytest.mark.parametrize("shape,message", [((32, 32), "cannot run on input_shape"),
                                           ((0, 32, 32, 3), "positive ints"),
                                           ("abc", "positive ints"), (None, "positive ints")])
def test_bad_input_shape_is_named(shape, message):
  model = models.create_model("small_cnn", width=0.25, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=message):
    compute_summary(model, shape)


def test_not_a_module_is_refused():
  with pytest.raises(TypeError, match="model must be a flax.nnx.Module"):
    compute_summary(lambda x: x, (1, 4))
