"""Tests for xnorjax.deploy (export, fold, load) and experiments/export.py.

Exactness, as stated in xnorjax/deploy/fold.py: every packed activation of the deployed program
equals the packed signs of the layer program (what the eval-mode model computes) bit for bit, so
against the eval-mode model (per-layer packed kernels) the logits differ only by the folding of the
last binary layer's BatchNorm into its float epilogue: |diff| <= 1e-5 * max(1, |logit|). Against
the eval model with float convs (implementation="float"), whose sums of +-alpha round, predictions are
equal and logits agree within 1e-3 * max(1, |logit|) (a sign within a few ulps of a threshold
could flip there; measured differences are ~1e-6). Both sides get the same input: the same float
array, or uint8 images normalised inside the jitted computation as training evaluates
(`experiments.evaluate.predict`); normalising differently (e.g. eagerly) rounds about half the
inputs differently by an ulp, which can flip first-layer signs that lie that close to zero.
"""

import functools
import json
import os
import shutil
import subprocess
import sys

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers.markers import requires_extension
from helpers import lowering
from experiments import export as export_cli
from experiments import input_pipeline
from experiments import trainer
from experiments.configs import default
from xnorjax import deploy
from xnorjax import models
from xnorjax import nn as xnn
from xnorjax.deploy import fold as fold_lib
from xnorjax.deploy import program as program_lib
from xnorjax.ops import pack_bits

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CIFAR10 = os.environ.get(input_pipeline.CIFAR10_ENV_VAR, "")
RTOL_EVAL = 1e-5
RTOL_XLA = 1e-3
IMAGE = (32, 32, 3)


def _close(got, want, rtol):
  got, want = np.asarray(got), np.asarray(want)
  assert got.shape == want.shape
  bound = rtol * np.maximum(1.0, np.abs(want))
  assert np.all(np.abs(got - want) <= bound), float(np.max(np.abs(got - want) / bound))


def randomize_batch_norms(model, rng):
  """Random running statistics, gammas of both signs (some exactly 0), random betas."""
  for _, m in nnx.iter_modules(model):
    if isinstance(m, nnx.BatchNorm):
      c = m.mean[...].shape[0]
      m.mean[...] = jnp.asarray(rng.normal(0.3, 1.0, c), jnp.float32)
      m.var[...] = jnp.asarray(rng.uniform(0.1, 3.0, c), jnp.float32)
      if m.scale is not None:
        gamma = rng.normal(0.0, 1.0, c)
        gamma[rng.random(c) < 0.1] = 0.0
        m.scale[...] = jnp.asarray(gamma, jnp.float32)
      if m.bias is not None:
        m.bias[...] = jnp.asarray(rng.normal(0.0, 1.0, c), jnp.float32)
  return model


def random_model(name, width, rng):
  model = models.create_model(name, num_classes=10, width=width,
                              rngs=nnx.Rngs(int(rng.integers(1 << 30))))
  return randomize_batch_norms(model, rng)


def binary_inputs(program, arrays, x):
  """{binary op name: its input, packed} while running `program` on x."""
  taps = {}
  for op in program:
    if op.kind in program_lib.BINARY_KINDS:
      taps[op.name] = x if x.dtype == jnp.uint32 else pack_bits(x)
    x = program_lib.OPS[op.kind](x, arrays.get(op.name, {}), **op.attrs)
  return taps, x


# ------------------------------------------------------------------------------------------------
# Pieces.
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("window,strides,padding", [((2, 2), (2, 2), "VALID"),
                                                    ((3, 3), (2, 2), ((1, 1), (1, 1)))])
def test_packed_max_pool_is_the_sign_of_the_float_pool(rng, window, strides, padding):
  """sign(f(max v)) from the packed sign(f(v)): OR where f increases, AND where it decreases."""
  c = 45  # two words, the second with 19 tail bits
  v = jnp.asarray(rng.normal(size=(3, 8, 6, c)), jnp.float32)
  g = rng.normal(size=c)
  g[:3] = 0.0
  g, h = jnp.asarray(g, jnp.float32), jnp.asarray(rng.normal(0, 0.5, c), jnp.float32)
  pooled = nnx.max_pool(v, window, strides=strides, padding=padding)
  want = pack_bits(pooled * g + h)
  got = deploy.packed_max_pool(pack_bits(v * g + h), pack_bits(g), window=window,
                               strides=strides, padding=padding)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  assert np.any(np.asarray(got) & np.uint32(0xFFFFFFFF)), "all-zero output: nothing tested"


@pytest.mark.parametrize("table_elements", [1 << 24, 601 * 16], ids=["whole", "chunked"])
def test_sign_thresholds_reproduce_the_chain_for_every_dot(rng, monkeypatch, table_elements):
  monkeypatch.setattr(fold_lib, "_TABLE_ELEMENTS", table_elements)
  o, k = 70, 300
  alpha = rng.uniform(0.01, 0.2, o).astype(np.float32)
  stats = lambda: dict(mean=jnp.asarray(rng.normal(0, 1, o), jnp.float32),
                       var=jnp.asarray(rng.uniform(0.1, 2, o), jnp.float32),
                       scale=jnp.asarray(rng.normal(0, 1, o) * (rng.random(o) > 0.1), jnp.float32),
                       bias=jnp.asarray(rng.normal(0, 1, o), jnp.float32))
  chain = [program_lib.Op("add_bias", "b"), program_lib.Op("batch_norm", "bn1", {"epsilon": 1e-5}),
           program_lib.Op("relu", "r"), program_lib.Op("batch_norm", "bn2", {"epsilon": 1e-4})]
  arrays = {"b": {"bias": jnp.asarray(rng.normal(0, 0.3, o), jnp.float32)}, "bn1": stats(),
            "bn2": stats()}
  scale, bias = deploy.sign_thresholds(alpha, chain, arrays, k)
  dots = np.arange(-k, k + 1, dtype=np.float32)[:, None]
  want = np.asarray(program_lib.run(chain, arrays, jnp.asarray(dots * alpha)[:, None, None, :])
                    >= 0)[:, 0, 0, :]
  got = dots * scale + bias >= 0  # the kernel's epilogue test; exact (half-integers, +-1, 0)
  np.testing.assert_array_equal(got, want)
  assert set(np.unique(scale)) == {-1.0, 0.0, 1.0}, "thresholds of both directions and constants"


def test_sign_thresholds_refuse_a_non_monotone_op():
  with pytest.raises(ValueError, match="max_pool"):
    deploy.sign_thresholds(np.ones(3, np.float32), [program_lib.Op("max_pool", "p")], {}, 5)


# ------------------------------------------------------------------------------------------------
# Whole models with random weights.
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def random_vgg():
  """bin_vgg16 (width 1/8: 8 to 64 channels, so words with tail bits) with random BatchNorms,
  and its export; shared by the tests below (exporting takes seconds)."""
  seed = np.random.SeedSequence().entropy
  print(f"numpy seed: {seed}")
  rng = np.random.default_rng(seed)
  model = random_model("bin_vgg16", 0.125, rng)
  mean = rng.uniform(0.3, 0.6, 3).astype(np.float32)
  std = rng.uniform(0.2, 0.3, 3).astype(np.float32)
  exported = deploy.export_model(model, input_shape=IMAGE, mean=mean, std=std,
                                 classes=[f"c{i}" for i in range(10)], model_name="bin_vgg16")
  return model, exported, mean, std


@requires_extension
@pytest.mark.parametrize("name,width,packs", [("bin_vgg16", 0.125, 1), ("bin_small_cnn", 0.25, 1),
                                              ("bin_nin", 0.125, 2)])
def test_deployed_program_is_bit_exact_per_layer(rng, random_vgg, name, width, packs):
  """Packed from the first binary layer to the last (NIN: up to and from its average pool)."""
  model = random_vgg[0] if name == "bin_vgg16" else random_model(name, width, rng)
  model.eval()
  x = jnp.asarray(rng.normal(size=(6, *IMAGE)), jnp.float32)
  layer_ops, layer_arrays = deploy.layer_program(model)
  folded = deploy.fold_program(layer_ops, layer_arrays)
  kinds = [op.kind for op in folded.program]
  assert "sign" not in kinds and kinds.count("pack") == packs, kinds
  want_bits, want = jax.jit(lambda a, x: binary_inputs(layer_ops, a, x))(layer_arrays, x)
  got_bits, got = jax.jit(lambda a, x: binary_inputs(folded.program, a, x))(folded.arrays, x)
  assert list(got_bits) == list(want_bits) and len(got_bits) >= 2
  for layer in want_bits:
    np.testing.assert_array_equal(np.asarray(got_bits[layer]), np.asarray(want_bits[layer]),
                                  err_msg=layer)
  _close(got, want, RTOL_EVAL)
  reference = export_cli.model_logits_fn(model)(x)
  _close(want, reference, RTOL_XLA if name == "bin_nin" else RTOL_EVAL)  # NIN: BWN convs in XLA
  np.testing.assert_array_equal(np.asarray(got).argmax(-1), np.asarray(reference).argmax(-1))
  # Both pooling directions were exercised.
  masks = [np.asarray(a["increasing"]) for n, a in folded.arrays.items() if "increasing" in a]
  if name != "bin_small_cnn":  # its only packed pool may see few channels
    assert any(m.any() for m in masks) and any((~m).any() for m in masks)


@requires_extension
def test_saved_model_matches_the_eval_model(rng, random_vgg, tmp_path):
  model, exported, mean, std = random_vgg
  manifest = deploy.save(exported, str(tmp_path / "out"))
  predict = deploy.load(str(tmp_path / "out"))
  assert predict.classes == tuple(f"c{i}" for i in range(10))
  assert manifest["model"] == "bin_vgg16" and manifest["num_classes"] == 10
  images = rng.integers(0, 256, (20, *IMAGE), dtype=np.uint8)
  split = input_pipeline.Split(images, rng.integers(0, 10, 20).astype(np.int32))
  for agreement, rtol in zip(export_cli.verify(predict, model, split, mean=mean, std=std,
                                               batch_size=8), (RTOL_EVAL, RTOL_XLA)):
    assert agreement.all_equal, agreement
    assert agreement.max_rel_logit_diff <= rtol, agreement
  x = jnp.asarray(rng.normal(size=(5, *IMAGE)), jnp.float32)  # float input: already normalised
  _close(predict(x), export_cli.model_logits_fn(model)(x), RTOL_EVAL)
  assert all(m.implementation == "auto" for _, m in nnx.iter_modules(model)
             if isinstance(m, (xnn.BinaryConv, xnn.BinaryDense)))


@requires_extension
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no CUDA compiler on this machine")
def test_deployed_program_for_cuda_calls_only_cuda_kernels(random_vgg, monkeypatch):
  """Lowered for CUDA here: the binary layers on the CUDA packed kernels, and no target that only
  the CPU registers (the float layers on XLA's convs, as off the CPU)."""
  from xnorjax import _ffi_cuda  # pylint: disable=g-import-not-at-top
  exported = random_vgg[1]
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  fn = jax.jit(functools.partial(program_lib.run, exported.program))
  calls = lowering.custom_call_targets(
      fn, (exported.arrays, jnp.zeros((2, *IMAGE), jnp.float32)), "cuda")
  assert "xnorjax_xnor_conv_packed_hwio" in calls, calls
  assert {c for c in calls if c.startswith("xnorjax_")} <= set(_ffi_cuda.registrations()), calls


def test_sizes_binary_layers_shrink_more_than_25x(rng):
  model = random_model("bin_small_cnn", 1.0, rng)  # 32 -> 64 -> 128 channels: whole words
  sizes = deploy.export_model(model, input_shape=IMAGE).manifest["sizes"]
  convs = [m for _, m in nnx.iter_modules(model)
           if isinstance(m, xnn.BinaryConv) and m.input_quantizer is not None]
  layers = sizes["binary_layers"]
  assert [l["weights"] for l in layers] == [int(np.prod(c.kernel[...].shape)) for c in convs]
  for layer, conv in zip(layers, convs):
    assert layer["float32_kernel_bytes"] == conv.kernel[...].nbytes
    assert layer["packed_kernel_bytes"] * 32 == conv.kernel[...].nbytes
  assert sizes["binary_kernel_ratio"] == 32.0
  assert sizes["binary_ratio"] >= 25.0
  assert sizes["model_float32_bytes"] == sum(
      np.asarray(v).nbytes for v in jax.tree.leaves(nnx.state(model, nnx.Param, nnx.BatchStat)))


# ------------------------------------------------------------------------------------------------
# A model of the user's own, described by its inference_program.
# ------------------------------------------------------------------------------------------------

class _OwnNet(nnx.Module):
  """Float stem, two binary conv blocks (40 channels: a word with tail bits), max-pooling, flatten,
  a binary dense layer (the layers' default quantizers) and a float dense head, on 16x16 images."""

  def __init__(self, rngs):
    float_layer = dict(input_quantizer=None, kernel_quantizer=None)
    self.stem = xnn.BinaryConv(3, 16, 3, use_bias=True, **float_layer, rngs=rngs)
    self.stem_bn = nnx.BatchNorm(16, rngs=rngs)
    self.block1 = xnn.BinaryConvBlock(16, 40, 3, output_batch_norm=True, activation=nnx.relu,
                                      rngs=rngs)
    self.block2 = xnn.BinaryConvBlock(40, 24, 3, strides=2, use_bias=True, activation=nnx.relu,
                                      rngs=rngs)
    self.flat_bn = nnx.BatchNorm(4 * 4 * 24, rngs=rngs)
    self.hidden = xnn.BinaryDense(4 * 4 * 24, 32, rngs=rngs)
    self.hidden_bn = nnx.BatchNorm(32, rngs=rngs)
    self.head = xnn.BinaryDense(32, 10, use_bias=True, **float_layer, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.stem_bn(self.stem(x)))
    x = nnx.max_pool(self.block1(x), (2, 2), strides=(2, 2))
    x = self.flat_bn(self.block2(x).reshape(x.shape[0], -1))
    return self.head(nnx.relu(self.hidden_bn(self.hidden(x))))

  def inference_program(self):
    return [self.stem, self.stem_bn, deploy.Relu(), self.block1, deploy.MaxPool(2), self.block2,
            deploy.Flatten(), self.flat_bn, self.hidden, self.hidden_bn, deploy.Relu(), self.head]


@requires_extension
def test_own_model_exports_bit_exact_and_loads(rng, tmp_path):
  """A model defined here, not in the zoo, exports through its inference_program alone."""
  model = randomize_batch_norms(_OwnNet(nnx.Rngs(int(rng.integers(1 << 30)))), rng)
  model.eval()
  image = (16, 16, 3)
  x = jnp.asarray(rng.normal(size=(6, *image)), jnp.float32)
  layer_ops, layer_arrays = deploy.layer_program(model)
  folded = deploy.fold_program(layer_ops, layer_arrays)
  kinds = [op.kind for op in folded.program]
  assert kinds.count("xnor_conv") == 2 and kinds.count("xnor_dense") == 1, kinds
  assert "packed_max_pool" in kinds and "sign" not in kinds, kinds
  want_bits, want = jax.jit(lambda a, x: binary_inputs(layer_ops, a, x))(layer_arrays, x)
  got_bits, got = jax.jit(lambda a, x: binary_inputs(folded.program, a, x))(folded.arrays, x)
  assert list(got_bits) == list(want_bits) and len(got_bits) == 3
  for layer in want_bits:
    np.testing.assert_array_equal(np.asarray(got_bits[layer]), np.asarray(want_bits[layer]),
                                  err_msg=layer)
  reference = export_cli.model_logits_fn(model)(x)
  _close(want, reference, RTOL_EVAL)
  _close(got, reference, RTOL_EVAL)
  deploy.save(deploy.export_model(model, input_shape=image), str(tmp_path / "own"))
  predict = deploy.load(str(tmp_path / "own"))
  _close(predict(x), reference, RTOL_EVAL)
  np.testing.assert_array_equal(np.asarray(predict(x)).argmax(-1),
                                np.asarray(reference).argmax(-1))


class _WithConv(nnx.Module):
  """An nnx.Conv (not a layer export converts) inside an otherwise supported model."""

  def __init__(self, rngs):
    self.block = xnn.BinaryConvBlock(3, 8, 3, rngs=rngs)
    self.features = nnx.List([nnx.Conv(8, 8, (3, 3), rngs=rngs)])

  def __call__(self, x):
    return self.features[0](self.block(x)).mean(axis=(1, 2))

  def inference_program(self):
    return [self.block, *self.features, deploy.GlobalAvgPool()]


class _Steps(nnx.Module):
  """A model whose inference_program is the given steps (built from its own submodules)."""

  def __init__(self, make_steps, rngs):
    self.block = xnn.BinaryConvBlock(3, 8, 3, activation=jax.nn.tanh, rngs=rngs)
    self.make_steps = make_steps

  def inference_program(self):
    return self.make_steps(self)


class _NoProgram(nnx.Module):

  def __init__(self, rngs):
    self.block = xnn.BinaryConvBlock(3, 8, 3, rngs=rngs)


def _one_line_error(model, match):
  with pytest.raises(ValueError, match=match) as info:
    deploy.layer_program(model)
  assert "\n" not in str(info.value), str(info.value)


def test_unsupported_layers_of_an_own_model_are_named_in_one_line():
  rngs = nnx.Rngs(0)
  _one_line_error(_WithConv(rngs), r"^features\.0: export does not support Conv modules")
  _one_line_error(_NoProgram(rngs), r"^the model \(_NoProgram\): export does not support "
                  "_NoProgram modules")
  _one_line_error(_Steps(lambda m: [m.block], rngs), r"^block: activation tanh has no inference step \(ReLU only\)")
  _one_line_error(_Steps(lambda m: [jax.nn.relu], rngs), "step 0 of its inference_program is "
                  ".*neither a submodule nor an op")
  _one_line_error(_Steps(lambda m: [m], rngs), "contains the module itself")
  outside = xnn.BinaryConv(3, 8, 3, rngs=rngs)
  _one_line_error(_Steps(lambda m: [outside], rngs), "step 0 .* is not a submodule of the model")
  with pytest.raises(TypeError, match="model must be a flax.nnx.Module"):
    deploy.layer_program(lambda x: x)
  with pytest.raises(ValueError, match="window must be a positive int"):
    deploy.MaxPool(0)
  with pytest.raises(ValueError, match="strides must be"):
    deploy.AvgPool(3, strides=(2, 2, 2))
  with pytest.raises(ValueError, match="padding must be 'VALID' or"):
    deploy.MaxPool(3, padding="SAME")


# ------------------------------------------------------------------------------------------------
# Errors.
# ------------------------------------------------------------------------------------------------

def test_unsupported_models_and_layers_are_named(rng):
  with pytest.raises(ValueError, match="bin_resnet18"):
    deploy.layer_program(models.create_model("bin_resnet18", width=0.125, rngs=nnx.Rngs(0)))
  model = models.create_model("bin_small_cnn", width=0.25, rngs=nnx.Rngs(0))
  model.blocks[0].conv.activation_scaling = True
  with pytest.raises(ValueError, match="blocks.0.conv: activation_scaling"):
    deploy.layer_program(model)
  model = models.create_model("bin_small_cnn", width=0.25, dtype="bfloat16", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="float32 models only"):
    deploy.layer_program(model)


def test_load_and_predict_errors(rng, tmp_path):
  with pytest.raises(FileNotFoundError, match="manifest.json"):
    deploy.load(str(tmp_path))
  model = random_model("bin_small_cnn", 0.25, rng)
  exported = deploy.export_model(model, input_shape=IMAGE)
  path = str(tmp_path / "m")
  deploy.save(exported, path)
  with pytest.raises(FileExistsError, match="overwrite"):
    deploy.save(exported, path)
  deploy.save(exported, path, overwrite=True)
  (tmp_path / "other").mkdir()
  with pytest.raises(FileExistsError, match="not an exported model"):
    deploy.save(exported, str(tmp_path / "other"), overwrite=True)
  predict = deploy.load(path)
  with pytest.raises(ValueError, match=r"images must have shape \[N, 32, 32, 3\]"):
    predict(np.zeros((2, 28, 28, 3), np.uint8))
  with pytest.raises(TypeError, match="images must be uint8"):
    predict(np.zeros((2, 32, 32, 3), np.int32))
  manifest_file = os.path.join(path, "manifest.json")
  with open(manifest_file) as f:
    manifest = json.load(f)
  manifest["format_version"] = 99
  with open(manifest_file, "w") as f:
    json.dump(manifest, f)
  with pytest.raises(ValueError, match="format_version 99"):
    deploy.load(path)


# ------------------------------------------------------------------------------------------------
# A trained model, through the command line.
# ------------------------------------------------------------------------------------------------

def _small_config(source="synthetic", steps=200):
  c = default.get_config("bin_small_cnn")
  c.data.source = source
  c.data.synthetic_train_size = 512
  c.data.synthetic_test_size = 200
  c.data.num_validation = 100
  c.batch_size = 32
  c.eval_batch_size = 100
  c.num_train_steps = steps
  c.eval_every_steps = steps // 2
  c.log_every_steps = steps
  c.model.options.width = 0.25
  c.optim.name = "adam"
  c.optim.learning_rate = 0.01
  c.optim.warmup_epochs = 0.5
  c.tensorboard = False
  return c


def _export_command(workdir, out, *extra):
  proc = subprocess.run([sys.executable, "-m", "experiments.export", f"--workdir={workdir}",
                         f"--out={out}", *extra], cwd=REPO, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(out, "manifest.json")) as f:
    return proc.stdout, json.load(f)


def _check_verification(manifest, images):
  auto, xla = manifest["verification"]
  assert "'auto'" in auto["reference"] and "'float'" in xla["reference"]
  for agreement, rtol in ((auto, RTOL_EVAL), (xla, RTOL_XLA)):
    assert agreement["images"] == images
    assert agreement["predictions_equal"] == images, agreement
    assert agreement["max_rel_logit_diff"] <= rtol, agreement
    assert agreement["exported_accuracy"] == agreement["reference_accuracy"]


@requires_extension
def test_export_of_a_trained_model(tmp_path):
  """bin_small_cnn trained 200 steps on synthetic data, its export checked on 200 test images."""
  workdir, out = str(tmp_path / "run"), str(tmp_path / "exported")
  trainer.train_and_evaluate(_small_config(), workdir)
  manifest, _ = export_cli.export_workdir(workdir, out, verify_images=-1, batch_size=64)
  summary = export_cli.format_summary(manifest, [], out)
  assert "binary layers" in summary and "manifest.json" in summary
  with open(os.path.join(out, "manifest.json")) as f:
    assert json.load(f) == json.loads(json.dumps(manifest))
  assert manifest["model"] == "bin_small_cnn" and manifest["source"]["checkpoint"] == "best"
  assert manifest["input"]["shape"] == [32, 32, 3] and len(manifest["classes"]) == 10
  _check_verification(manifest, 200)
  assert manifest["verification"][0]["exported_accuracy"] > 0.3  # it learned something
  assert sorted(os.listdir(out)) == ["arrays", "manifest.json"]
  stdout, again = _export_command(workdir, str(tmp_path / "cli"), "--verify_images=0")
  assert "binary layers" in stdout and "verification" not in again
  assert again["arrays"] == manifest["arrays"] and again["program"] == manifest["program"]


def test_command_line_errors_are_one_line(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "experiments.export", f"--workdir={tmp_path}",
                         f"--out={tmp_path / 'x'}"], cwd=REPO, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 1
  assert proc.stderr.strip().startswith("error: FileNotFoundError") and "config.json" in proc.stderr


@pytest.mark.slow
@requires_extension
@pytest.mark.skipif(not CIFAR10,
                    reason=f"${input_pipeline.CIFAR10_ENV_VAR} is not set (real CIFAR-10 copy)")
def test_real_cifar10_trained_model_exports_exactly(tmp_path):
  """bin_small_cnn, 300 steps on real CIFAR-10; the export on the 10,000 real test images."""
  config = _small_config(source="image_folder", steps=300)
  config.data.path = CIFAR10
  config.data.num_validation = 1000
  workdir, out = str(tmp_path / "run"), str(tmp_path / "exported")
  trainer.train_and_evaluate(config, workdir)
  _, manifest = _export_command(workdir, out, "--verify_images=-1")
  _check_verification(manifest, 10000)
