"""A preset's jitted train and forward steps on one synthetic batch, for the benchmarks
(experiments/bench/train.py, experiments/bench/conv_policy.py, experiments/bench/profile_step.py)."""

import contextlib
import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments import configs
from experiments import optim
from experiments import trainer
from experiments.configs import bin_vgg16 as bin_vgg16_config
from experiments.configs import vgg16 as vgg16_config
from xnorjax.ops import conv as conv_lib

CONFIGS = {"vgg16": vgg16_config, "bin_vgg16": bin_vgg16_config}


@dataclasses.dataclass
class Steps:
  """A preset's jitted train and forward steps on one synthetic device batch, and their state."""
  config: Any
  model: Any
  mesh: Any
  step_fn: Any
  eval_fn: Any
  state: dict
  images: jax.Array
  labels: jax.Array
  mask: jax.Array


def build_steps(name: str, batch_size: int, overrides=()) -> Steps:
  """The train step (`trainer.train_step` with the preset's optimiser) and forward step of the
  model `name` (`configs.preset`), jitted as in training, with a state and a synthetic batch on
  the devices."""
  config = configs.with_overrides(configs.preset(name), overrides)
  model = trainer.create_model(config, 0)
  parts = trainer.split_model(model)
  labels = optim.param_labels(parts.params, parts.binary_mask)
  schedule = optim.learning_rate_schedule(config.optim, 390, 390 * config.num_epochs)
  tx = optim.create_optimizer(config.optim, labels, schedule)
  mesh = trainer.make_mesh(config.num_devices)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  sharded = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  state = jax.device_put({"params": parts.params, "rest": parts.rest,
                          "opt_state": tx.init(parts.params)}, replicated)
  rng = np.random.default_rng(0)
  images = jax.device_put(rng.integers(0, 256, (batch_size, 32, 32, 3), dtype=np.uint8), sharded)
  labels_ = jax.device_put(rng.integers(0, 10, batch_size).astype(np.int32), sharded)
  mask = jax.device_put(np.ones(batch_size, bool), sharded)
  mean, std = jnp.full(3, 0.5), jnp.full(3, 0.25)
  step_fn = jax.jit(functools.partial(trainer.train_step, graphdef=parts.train_graphdef, tx=tx,
                                      mean=mean, std=std, label_smoothing=0.0),
                    donate_argnums=0, out_shardings=(replicated, replicated))
  eval_fn = jax.jit(functools.partial(trainer.eval_step, graphdef=parts.eval_graphdef, mean=mean,
                                      std=std))
  return Steps(config, model, mesh, step_fn, eval_fn, state, images, labels_, mask)


def compile_train_step(s: Steps, rule=None, warmup: int = 2):
  """(`s.step_fn` compiled for `s`'s batch, with `rule` as a `conv.policy_override` if given;
  the state after `warmup` steps of it, so that timing starts warm)."""
  with conv_lib.policy_override(rule) if rule else contextlib.nullcontext():
    compiled = s.step_fn.lower(s.state, s.images, s.labels).compile()
  state = s.state
  for _ in range(warmup):
    state, _ = compiled(state, s.images, s.labels)
  return compiled, jax.block_until_ready(state)
