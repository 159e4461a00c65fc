"""Tests for the model registry (xnorjax.models): shapes, binary layers, first/last layer options."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xnorjax import models
from xnorjax import optim as xnorjax_optim

# name -> number of binarized kernels at the default settings (first and last layers float).
BINARY_KERNELS = {"vgg16": 0, "bin_vgg16": 13, "nin": 0, "bin_nin": 7, "resnet18": 0,
                  "bin_resnet18": 16, "small_cnn": 0, "bin_small_cnn": 2,
                  "bin_reactnet18": 16}


@nnx.jit
def _forward(model, x):
  return model(x)


def _binary_kernel_shapes(model):
  mask = xnorjax_optim.binary_kernel_mask(model)
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  return [p.shape for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(mask)) if m]


def test_registry_lists_every_model():
  assert set(models.MODEL_NAMES) == set(BINARY_KERNELS)


def test_unknown_model_names_the_known_ones():
  with pytest.raises(ValueError, match="unknown model 'vgg17'.*bin_vgg16"):
    models.create_model("vgg17", rngs=nnx.Rngs(0))


def test_unknown_option_is_rejected_by_name():
  with pytest.raises(ValueError, match="does not accept option.*widht"):
    models.create_model("vgg16", widht=0.5, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"'vgg16' does not accept option\(s\) binarize_first_layer"):
    models.check_options("vgg16", {"width": 1.0, "binarize_first_layer": True})
  models.check_options("bin_vgg16", {"width": 1.0, "binarize_first_layer": True})


def test_float_model_rejects_binarize_options():
  from xnorjax.models import vgg
  with pytest.raises(ValueError, match="binarize_first_layer"):
    vgg.VGG16(binary=False, binarize_first_layer=True, width=0.0625, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("name", sorted(BINARY_KERNELS))
def test_forward_shape_and_binary_layers(name, rng):
  model = models.create_model(name, num_classes=7, width=0.0625, rngs=nnx.Rngs(int(rng.integers(1 << 30))))
  x = jnp.asarray(rng.normal(size=(3, 32, 32, 3)), jnp.float32)
  model.eval()
  y = _forward(model, x)
  assert y.shape == (3, 7)
  assert np.all(np.isfinite(np.asarray(y)))
  assert len(_binary_kernel_shapes(model)) == BINARY_KERNELS[name]
  # Eval mode is deterministic (BatchNorm running statistics, no dropout).
  np.testing.assert_array_equal(np.asarray(_forward(model, x)), np.asarray(y))


@pytest.mark.parametrize("name,extra", [("bin_vgg16", 2), ("bin_nin", 2), ("bin_resnet18", 2)])
def test_binarize_first_and_last_layers(name, extra):
  model = models.create_model(name, width=0.0625, binarize_first_layer=True,
                              binarize_last_layer=True, rngs=nnx.Rngs(0))
  assert len(_binary_kernel_shapes(model)) == BINARY_KERNELS[name] + extra


def test_bin_vgg16_conv_shapes_match_the_model():
  shapes = models.bin_vgg16_conv_shapes()
  assert [(s.in_channels, s.out_channels, s.input_hw[0]) for s in shapes] == [
      (64, 64, 32), (64, 64, 32), (64, 128, 16), (128, 128, 16), (128, 256, 8), (256, 256, 8),
      (256, 256, 8), (256, 512, 4), (512, 512, 4), (512, 512, 4), (512, 512, 2), (512, 512, 2),
      (512, 512, 2)]
  width = 0.125
  model = models.create_model("bin_vgg16", width=width, rngs=nnx.Rngs(0))
  expected = [(3, 3, s.in_channels, s.out_channels) for s in models.bin_vgg16_conv_shapes(width=width)]
  assert sorted(_binary_kernel_shapes(model)) == sorted(expected)


def test_bin_resnet18_shortcuts_are_real_valued(rng):
  """Bi-Real: the output of a unit moves with its real-valued input (identity shortcut)."""
  from xnorjax.models import resnet
  unit = resnet.BiRealUnit(8, 8, 1, input_quantizer="approx_sign",
                           kernel_quantizer="magnitude_aware_sign", dtype=None, rngs=nnx.Rngs(0))
  unit.eval()
  x = jnp.asarray(rng.uniform(0.5, 1.0, size=(2, 4, 4, 8)), jnp.float32)
  # Scaling a positive input keeps its signs, so the binary branch is unchanged: the difference of
  # the outputs is exactly the difference of the inputs.
  np.testing.assert_allclose(np.asarray(unit(2 * x) - unit(x)), np.asarray(x), rtol=1e-5, atol=1e-6)


def test_bin_nin_dropout_acts_in_training_only(rng):
  model = models.create_model("bin_nin", width=0.0625, rngs=nnx.Rngs(params=0, dropout=1))
  x = jnp.asarray(rng.normal(size=(2, 32, 32, 3)), jnp.float32)
  model.train()
  a, b = _forward(model, x), _forward(model, x)
  assert not np.allclose(np.asarray(a), np.asarray(b))
  model.eval()
  np.testing.assert_array_equal(np.asarray(_forward(model, x)), np.asarray(_forward(model, x)))


def test_vgg16_rejects_other_image_sizes(rng):
  model = models.create_model("vgg16", width=0.0625, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="32x32"):
    _forward(model, jnp.asarray(rng.normal(size=(1, 64, 64, 3)), jnp.float32))


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (3, 4, 6, 5)])
def test_max_pool_matches_reduce_window(rng, shape):
  from xnorjax.models import layers
  x = jnp.asarray(rng.normal(size=shape), jnp.float32)
  np.testing.assert_array_equal(np.asarray(layers.max_pool(x)),
                                np.asarray(nnx.max_pool(x, (2, 2), strides=(2, 2))))
  # Without ties the gradients agree too (each window's maximum gets the whole gradient).
  g = jnp.asarray(rng.normal(size=(shape[0], shape[1] // 2, shape[2] // 2, shape[3])), jnp.float32)
  grad_fast = jax.grad(lambda x: jnp.sum(layers.max_pool(x) * g))(x)
  grad_ref = jax.grad(lambda x: jnp.sum(nnx.max_pool(x, (2, 2), strides=(2, 2)) * g))(x)
  np.testing.assert_array_equal(np.asarray(grad_fast), np.asarray(grad_ref))
  with pytest.raises(ValueError, match="not divisible"):
    layers.max_pool(jnp.zeros((1, 5, 4, 1)))
