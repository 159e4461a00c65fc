"""bin_reactnet18 (xnorjax/models/reactnet.py) and its preset (experiments/configs/bin_reactnet18.py):
structure, forward shape, and a training step of the preset on tiny synthetic data."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import trainer
from experiments import train as train_main
from experiments.configs import bin_reactnet18 as preset
from xnorjax import models
from xnorjax import optim as xnorjax_optim
from xnorjax.models import reactnet
from xnorjax.nn import react


def _modules(model, kind):
  return [m for _, m in nnx.iter_modules(model) if isinstance(m, kind)]


@pytest.mark.parametrize("kernel_quantizer,binary_kernels", [("magnitude_aware_sign", 16), (None, 0)])
def test_builds_with_react_units_and_forward_shape(rng, kernel_quantizer, binary_kernels):
  model = models.create_model("bin_reactnet18", num_classes=7, width=0.0625,
                              kernel_quantizer=kernel_quantizer, rngs=nnx.Rngs(0))
  units = _modules(model, reactnet.ReActUnit)
  assert len(units) == 16
  assert len(_modules(model, react.RSign)) == 16 and len(_modules(model, react.RPReLU)) == 16
  assert sum(jax.tree.leaves(xnorjax_optim.binary_kernel_mask(model))) == binary_kernels
  # Every unit's conv binarizes its (RSign'ed) input; the downsampling shortcuts are float convs.
  assert all(u.conv.input_quantizer is not None for u in units)
  shortcut_convs = [u.shortcut.conv for u in units if u.shortcut.conv is not None]
  assert len(shortcut_convs) == 3
  assert all(c.input_quantizer is None and c.kernel_quantizer is None for c in shortcut_convs)
  x = jnp.asarray(rng.normal(size=(2, 32, 32, 3)), jnp.float32)
  model.eval()
  y = nnx.jit(lambda m, x: m(x))(model, x)
  assert y.shape == (2, 7) and np.all(np.isfinite(np.asarray(y)))


def test_preset_names_its_model_command_and_recipe():
  config = preset.get_config()
  assert train_main.preset_path("bin_reactnet18").endswith("configs/bin_reactnet18.py")
  assert config.model.name == "bin_reactnet18"
  assert "python -m experiments.train --model=bin_reactnet18 --workdir=runs/bin_reactnet18" in preset.__doc__
  models.check_options("bin_reactnet18", config.model.options.to_dict())
  assert config.optim.name == "adam" and config.optim.schedule == "linear"
  assert config.optim.learning_rate == pytest.approx(5e-4 * config.batch_size / 256)
  assert (config.optim.weight_decay, config.optim.weight_decay_binary) == (5e-6, 0.0)
  assert (config.distill.weight, config.distill.temperature) == (1.0, 1.0)


def test_one_training_step_of_the_preset_on_tiny_synthetic_data(tmp_path):
  config = preset.get_config()
  config.data.source = "synthetic"
  config.data.synthetic_train_size = 64
  config.data.synthetic_test_size = 16
  config.data.num_validation = 16
  config.model.options.width = 0.0625
  config.batch_size = 16
  config.eval_batch_size = 16
  config.num_train_steps = 1
  config.tensorboard = False
  results = trainer.train_and_evaluate(config, str(tmp_path / "run"))
  assert results["last_step"] == 1 and results["interrupted_by"] is None
  assert np.isfinite(results["test_loss"])
  initial = trainer.split_model(trainer.create_model(config, config.seed)).params
  trained = jax.device_get(results["state"]["params"])
  changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(initial), jax.tree.leaves(trained))]
  assert all(changed)  # Adam moves every parameter, RSign and RPReLU shifts included
