"""Quantizers against their closed-form gradients (numpy), name resolution, latent-weight clipping."""

import functools

from flax import nnx
import jax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import optax
import pytest

from xnorjax import nn as xnn
from xnorjax import optim
from xnorjax import quantizers


def _vjp(fn, x, g):
  _, pullback = jax.vjp(fn, x)
  return np.asarray(pullback(jnp.asarray(g, x.dtype))[0].astype(jnp.float32), np.float64)


def _inputs_with_edges(rng, shape, clip_value, dtype=np.float32):
  """Normal * 1.5 (some beyond the clip window) with exact zeros and exact +-clip_value planted."""
  x = (1.5 * rng.standard_normal(shape)).astype(np.float32)
  flat = x.reshape(-1)
  idx = rng.choice(flat.size, size=min(flat.size, 6), replace=False)
  flat[idx[:2]] = 0.0
  flat[idx[2:4]] = clip_value
  flat[idx[4:6]] = -clip_value
  return jnp.asarray(x, dtype)


# ------------------------------------------------------------------------------------------------
# ste_sign and approx_sign
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_ste_sign_forward(rng, dtype):
  x = _inputs_with_edges(rng, (7, 9), 1.0, dtype)
  y = quantizers.ste_sign(x)
  assert y.dtype == dtype
  np.testing.assert_array_equal(np.asarray(y, np.float32), np.where(np.asarray(x, np.float32) >= 0, 1, -1))


@pytest.mark.parametrize("clip_value", [1.0, 0.5, 1.75])
def test_ste_sign_gradient_closed_form(rng, clip_value):
  x = _inputs_with_edges(rng, (5, 33), clip_value)
  g = rng.standard_normal(x.shape).astype(np.float32)
  got = _vjp(functools.partial(quantizers.ste_sign, clip_value=clip_value), x, g)
  expected = g * (np.abs(np.asarray(x)) <= clip_value)
  np.testing.assert_array_equal(got, expected)
  assert np.any(got != 0) and np.any((got == 0) & (g != 0))  # both regions are exercised


def test_approx_sign_forward_and_gradient_closed_form(rng):
  x = _inputs_with_edges(rng, (6, 40), 1.0)
  x = x.at[0, :3].set(jnp.asarray([0.5, -0.5, 0.999], jnp.float32))
  g = rng.standard_normal(x.shape).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(quantizers.approx_sign(x)), np.where(np.asarray(x) >= 0, 1, -1))
  got = _vjp(quantizers.approx_sign, x, g)
  xa = np.abs(np.asarray(x, np.float64))
  expected = g * np.where(xa < 1, 2 - 2 * xa, 0.0)
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
  assert np.all(got[xa >= 1] == 0)


# ------------------------------------------------------------------------------------------------
# magnitude_aware_sign: each gradient variant against numpy.
# ------------------------------------------------------------------------------------------------

def _numpy_magnitude_aware(w, g, gradient, clip_value):
  """float64 closed forms, per output channel (last axis); returns (forward, dC/dW)."""
  w, g = np.asarray(w, np.float64), np.asarray(g, np.float64)
  axes = tuple(range(w.ndim - 1))
  n = np.prod(w.shape[:-1])
  s = np.where(w >= 0, 1.0, -1.0)
  alpha = np.abs(w).mean(axis=axes, keepdims=True)
  ste = (np.abs(w) <= clip_value).astype(np.float64)
  if gradient == "exact":
    grad = alpha * ste * g + s * (s * g).sum(axis=axes, keepdims=True) / n
  elif gradient == "paper":
    grad = g * (1.0 / n + alpha * ste)
  else:
    grad = alpha * ste * g
  return alpha * s, grad


# float32: a float32 computation of a sum of n terms, rtol 1e-5. bfloat16: alpha and the gradient
# are computed in float32 and rounded once to bfloat16 (8 significant bits): rtol 2^-7.
TOLERANCES = {jnp.float32: dict(rtol=1e-5, atol=1e-6), jnp.bfloat16: dict(rtol=2 ** -7, atol=1e-4)}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("shape", [(3, 3, 4, 5), (7, 6)], ids=["conv_hwio", "dense_io"])
@pytest.mark.parametrize("gradient", ["exact", "paper", "stop_alpha"])
def test_magnitude_aware_sign_gradient_closed_form(rng, dtype, shape, gradient):
  clip_value = 1.0
  w = _inputs_with_edges(rng, shape, clip_value, dtype)
  g = jnp.asarray(rng.standard_normal(shape), dtype)
  fn = functools.partial(quantizers.magnitude_aware_sign, gradient=gradient, clip_value=clip_value)
  out = fn(w)
  assert out.dtype == dtype and out.shape == shape
  ref_out, ref_grad = _numpy_magnitude_aware(w.astype(jnp.float32), g.astype(jnp.float32), gradient,
                                             clip_value)
  np.testing.assert_allclose(np.asarray(out.astype(jnp.float32)), ref_out, **TOLERANCES[dtype])
  got = _vjp(fn, w, g)
  # atol scaled by the gradient's size, so that it is a relative statement for the whole tensor.
  tol = dict(TOLERANCES[dtype])
  tol["atol"] *= float(np.abs(ref_grad).max())
  np.testing.assert_allclose(got, ref_grad, **tol)


def test_magnitude_aware_sign_variants_differ(rng):
  """The three variants are different rules (guards against a registry mapping two to one)."""
  w = jnp.asarray(rng.standard_normal((3, 3, 4, 5)), jnp.float32)
  g = rng.standard_normal(w.shape).astype(np.float32)
  grads = {v: _vjp(functools.partial(quantizers.magnitude_aware_sign, gradient=v), w, g)
           for v in quantizers.MAGNITUDE_AWARE_GRADIENTS}
  assert not np.allclose(grads["exact"], grads["paper"])
  assert not np.allclose(grads["exact"], grads["stop_alpha"])
  assert not np.allclose(grads["paper"], grads["stop_alpha"])


def test_exact_gradient_is_the_true_derivative_where_sign_is_constant(rng):
  """With |w| > clip_value everywhere the STE term vanishes and alpha * sign(w) is smooth in w:
  the "exact" rule must then be its true derivative (alpha scaling with a constant sign)."""
  clip_value = 0.05
  w = rng.uniform(0.2, 1.5, size=(3, 3, 2, 4)) * rng.choice([-1.0, 1.0], size=(3, 3, 2, 4))
  fn = functools.partial(quantizers.magnitude_aware_sign, gradient="exact", clip_value=clip_value)
  check_grads(fn, (jnp.asarray(w, jnp.float32),), order=1, modes=("rev",), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("name,gradient", [("magnitude_aware_sign", "exact"),
                                           ("magnitude_aware_sign_exact", "exact"),
                                           ("magnitude_aware_sign_paper", "paper"),
                                           ("magnitude_aware_sign_stop_alpha", "stop_alpha")])
def test_get_resolves_variants(rng, name, gradient):
  w = jnp.asarray(rng.standard_normal((4, 3)), jnp.float32)
  g = rng.standard_normal(w.shape).astype(np.float32)
  np.testing.assert_array_equal(_vjp(quantizers.get(name), w, g),
                                _vjp(functools.partial(quantizers.magnitude_aware_sign, gradient=gradient), w, g))


def test_get_names_callables_none():
  assert quantizers.get("ste_sign") is quantizers.ste_sign
  assert quantizers.get("approx_sign") is quantizers.approx_sign
  assert quantizers.get(None) is None
  fn = lambda x: x
  assert quantizers.get(fn) is fn
  with pytest.raises(ValueError, match="kernel_quantizer='sign'.*ste_sign.*magnitude_aware_sign_paper"):
    quantizers.get("sign", argument="kernel_quantizer")
  with pytest.raises(TypeError, match="identifier"):
    quantizers.get(3)


def test_declared_forward_kinds():
  """Sign-likeness is read from the declaration, through functools.partial and the registry."""
  for q in ("ste_sign", "approx_sign", quantizers.ste_sign,
            functools.partial(quantizers.ste_sign, clip_value=0.5)):
    q = quantizers.get(q)
    assert quantizers.is_sign(q) and not quantizers.is_scaled_sign(q), q
    assert q.precision == 1 if not isinstance(q, functools.partial) else q.func.precision == 1
  for name in ("magnitude_aware_sign", "magnitude_aware_sign_paper", "magnitude_aware_sign_stop_alpha"):
    q = quantizers.get(name)
    assert quantizers.is_scaled_sign(q) and not quantizers.is_sign(q), name
    assert quantizers.forward_kind(q) == "scaled_sign"
  undeclared = lambda x: quantizers.ste_sign(x)  # same values, but nothing declares it
  for q in (None, undeclared, functools.partial(undeclared)):
    assert quantizers.forward_kind(q) is None and not quantizers.is_sign(q)

  @quantizers.sign_like()
  def narrow_sign(x):
    return quantizers.ste_sign(x, clip_value=0.5)

  assert quantizers.is_sign(narrow_sign) and quantizers.get(narrow_sign) is narrow_sign
  assert quantizers.is_scaled_sign(quantizers.sign_like("scaled_sign")(lambda w: w))

  @quantizers.sign_like()
  class SignObject:  # a class (or its instances) carries the declaration as class attributes

    def __call__(self, x):
      return quantizers.ste_sign(x)

  assert quantizers.is_sign(SignObject())
  with pytest.raises(ValueError, match="kind must be one of \\('sign', 'scaled_sign'\\)"):
    quantizers.sign_like("ternary")
  with pytest.raises(TypeError, match="sign_like decorates a callable"):
    quantizers.sign_like()(3)


def test_bad_quantizer_inputs():
  with pytest.raises(TypeError, match="x must be a floating-point"):
    quantizers.ste_sign(jnp.arange(4))
  with pytest.raises(TypeError, match="w must be a floating-point"):
    quantizers.magnitude_aware_sign(jnp.ones((3, 2), jnp.int32))
  with pytest.raises(ValueError, match="w must have rank >= 2"):
    quantizers.magnitude_aware_sign(jnp.ones((3,)))
  with pytest.raises(ValueError, match="gradient must be one of"):
    quantizers.magnitude_aware_sign(jnp.ones((3, 2)), gradient="approx")
  with pytest.raises(ValueError, match="clip_value must be positive"):
    quantizers.ste_sign(jnp.ones(3), clip_value=-1.0)


# ------------------------------------------------------------------------------------------------
# Latent-weight clipping (xnorjax.optim).
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_clip_latent_weights_lands_in_box(rng, dtype):
  """Params anywhere in [-8, 8], updates of any size: params + updates land exactly in the box."""
  clip_value = 1.0
  params = {"a": jnp.asarray(rng.uniform(-8, 8, 20000), dtype),
            "b": jnp.asarray(rng.uniform(-1, 1, (50, 40)), dtype)}
  updates = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape) * 4, dtype), params)
  tx = optim.clip_latent_weights(clip_value)
  new_updates, _ = tx.update(updates, tx.init(params), params)
  new_params = optax.apply_updates(params, new_updates)
  for leaf, before, upd in zip(jax.tree.leaves(new_params), jax.tree.leaves(params), jax.tree.leaves(updates)):
    leaf = np.asarray(leaf.astype(jnp.float32))
    assert leaf.min() >= -clip_value and leaf.max() <= clip_value
    inside = np.abs(np.asarray((before + upd).astype(jnp.float32))) < clip_value
    unclipped = np.asarray((before + upd).astype(jnp.float32))
    np.testing.assert_array_equal(leaf[inside], unclipped[inside])  # in-box steps are untouched
    assert np.mean(np.abs(leaf) == clip_value) > 0.1  # many were clipped onto the boundary


def test_clip_latent_weights_masked_in_nnx_optimizer(rng):
  """Only binarized kernels are clipped; float kernels, biases and BatchNorm params are free."""

  class Net(nnx.Module):

    def __init__(self, rngs):
      self.stem = xnn.BinaryConv(3, 4, 3, input_quantizer=None, kernel_quantizer=None,
                                 use_bias=True, rngs=rngs)  # float
      self.block = xnn.BinaryConvBlock(4, 4, 3, rngs=rngs)  # XNOR
      self.head = xnn.BinaryDense(4, 2, input_quantizer=None, kernel_quantizer="ste_sign",
                                  rngs=rngs)  # BWN-like

    def __call__(self, x):
      return self.head(self.block(self.stem(x)).mean(axis=(1, 2)))

  model = Net(nnx.Rngs(int(rng.integers(1 << 30))))
  mask = optim.binary_kernel_mask(model)
  assert jax.tree.leaves(mask).count(True) == 2
  assert mask["block"]["conv"]["kernel"] and mask["head"]["kernel"] and not mask["stem"]["kernel"]
  tx = optax.chain(optax.sgd(50.0), optax.masked(optim.clip_latent_weights(), mask))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  x = jnp.asarray(rng.standard_normal((2, 6, 6, 3)), jnp.float32)
  y = jnp.asarray(rng.standard_normal((2, 2)), jnp.float32)

  @nnx.jit
  def step(model, optimizer):
    grads = nnx.grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
    optimizer.update(model, grads)

  for _ in range(3):
    step(model, optimizer)
  params = nnx.as_pure(nnx.state(model, nnx.Param))
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    in_box = bool(jnp.all(jnp.abs(leaf) <= 1.0))
    if jax.tree_util.keystr(path) in ("['block']['conv']['kernel']", "['head']['kernel']"):
      assert in_box, path
  # With lr 50 the unclipped float params leave the box: the mask leaves them alone.
  assert not bool(jnp.all(jnp.abs(params["stem"]["kernel"]) <= 1.0))


def test_clip_latent_weights_needs_params_and_binary_kernel_mask_needs_model():
  tx = optim.clip_latent_weights()
  with pytest.raises(ValueError, match="needs params"):
    tx.update({"a": jnp.ones(2)}, tx.init({"a": jnp.ones(2)}))
  with pytest.raises(TypeError, match="needs the nnx.Module"):
    optim.binary_kernel_mask({"kernel": jnp.ones((2, 2))})
