"""Optimiser and learning-rate schedule from the config (optax).

Parameters fall into three groups, each with its own weight decay (`optax.partition`):
  "binary"     latent kernels of binarized layers (`xnorjax.optim.binary_kernel_mask`); these
               are also clipped to [-c, c] by `xnorjax.optim.clip_latent_weights`;
  "kernel"     float conv and dense kernels (rank >= 2);
  "norm_bias"  BatchNorm scales and offsets, biases (rank <= 1).
SGD and Adam add the decay to the gradient (L2, as PyTorch); AdamW decouples it (Loshchilov & Hutter).

With `cfg.binary_optimizer = "bop"` the "binary" group is trained by Bop (`xnorjax.bop`: +-1
weights flipped on the gradients' moving average, `cfg.bop_gamma`, `cfg.bop_threshold`) and every
other parameter by the optimizer above (`optax.partition`); the learning rate, weight decay,
clipping and gradient-norm clipping then apply to the float parameters only.
"""

from __future__ import annotations

import jax
import optax

from xnorjax import bop as bop_lib
from xnorjax import optim as xnorjax_optim

OPTIMIZERS = ("sgd", "adam", "adamw")
BINARY_OPTIMIZERS = ("", "bop")  # "": the binary kernels share the float parameters' optimizer.
SCHEDULES = ("cosine", "linear", "step", "constant")
GROUPS = ("binary", "kernel", "norm_bias")


def learning_rate_schedule(cfg, steps_per_epoch: int, total_steps: int) -> optax.Schedule:
  """Linear warm-up from 0 over cfg.warmup_epochs, then cosine, linear (decay to
  cfg.final_lr_fraction of the peak at the end, as ReActNet's), step or constant."""
  if cfg.schedule not in SCHEDULES:
    raise ValueError(f"config.optim.schedule={cfg.schedule!r} is not one of {', '.join(SCHEDULES)}")
  if cfg.learning_rate <= 0:
    raise ValueError(f"config.optim.learning_rate must be positive, got {cfg.learning_rate}")
  warmup = min(int(round(cfg.warmup_epochs * steps_per_epoch)), max(total_steps - 1, 0))
  peak = cfg.learning_rate
  if cfg.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup else peak, peak_value=peak, warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1), end_value=peak * cfg.final_lr_fraction)
  if cfg.schedule == "linear":
    main = optax.linear_schedule(peak, peak * cfg.final_lr_fraction, max(total_steps - warmup, 1))
  elif cfg.schedule == "step":
    boundaries = {int(round(e * steps_per_epoch)) - warmup: cfg.step_factor
                  for e in cfg.step_epochs if int(round(e * steps_per_epoch)) > warmup}
    main = optax.piecewise_constant_schedule(peak, boundaries)
  else:
    main = optax.constant_schedule(peak)
  if not warmup:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), main], [warmup])


def param_labels(params, binary_mask) -> dict:
  """The group ("binary" / "kernel" / "norm_bias") of every leaf of `params` (same structure).

  Args:
    params: the parameters (pure pytree, e.g. `nnx.to_pure_dict(nnx.state(model, nnx.Param))`).
    binary_mask: `xnorjax.optim.binary_kernel_mask(model)` (matched to params by path).
  """
  binary = {xnorjax_optim.path_keys(p) for p, v in jax.tree_util.tree_flatten_with_path(binary_mask)[0] if v}

  def label(path, leaf):
    if xnorjax_optim.path_keys(path) in binary:
      return "binary"
    return "kernel" if leaf.ndim >= 2 else "norm_bias"

  labels = jax.tree_util.tree_map_with_path(label, params)
  found = {xnorjax_optim.path_keys(p) for p, v in jax.tree_util.tree_flatten_with_path(labels)[0] if v == "binary"}
  if found != binary:
    raise ValueError(f"binary kernel mask paths not found in params: {sorted(binary - found)}")
  return labels


def initial_params(cfg, params, labels):
  """The parameters to start training from: with Bop the binary kernels' signs (Bop trains +-1
  weights, `xnorjax.bop.sign_init`), else `params` unchanged."""
  if cfg.get("binary_optimizer", "") != "bop":
    return params
  return jax.tree.map(lambda p, g: bop_lib.sign(p) if g == "binary" else p, params, labels)


def create_optimizer(cfg, labels, schedule: optax.Schedule) -> optax.GradientTransformation:
  """The optax transformation for config.optim, given `param_labels` and the schedule."""
  if cfg.name not in OPTIMIZERS:
    raise ValueError(f"config.optim.name={cfg.name!r} is not one of {', '.join(OPTIMIZERS)}")
  binary_optimizer = cfg.get("binary_optimizer", "")
  if binary_optimizer not in BINARY_OPTIMIZERS:
    raise ValueError(f"config.optim.binary_optimizer={binary_optimizer!r} is not one of "
                     f"{BINARY_OPTIMIZERS} ('' = the same optimizer as the float parameters)")
  float_tx = _float_optimizer(cfg, labels, schedule)
  if binary_optimizer == "bop":
    groups = jax.tree.map(lambda g: "binary" if g == "binary" else "float", labels)
    if "binary" not in jax.tree.leaves(groups):
      raise ValueError("config.optim.binary_optimizer='bop' needs a model with binary kernels "
                       "(binarized layers with a kernel_quantizer); this model has none")
    return optax.partition({"binary": bop_lib.bop(cfg.bop_gamma, cfg.bop_threshold),
                            "float": float_tx}, groups)
  return float_tx


def _float_optimizer(cfg, labels, schedule: optax.Schedule) -> optax.GradientTransformation:
  """config.optim.name's transformation, with per-group weight decay and latent-weight clipping."""
  decay = {"binary": cfg.weight_decay_binary, "kernel": cfg.weight_decay,
           "norm_bias": cfg.weight_decay_norm_bias}
  for group, wd in decay.items():
    if wd < 0:
      raise ValueError(f"weight decay of group {group!r} must be >= 0, got {wd}")
  weight_decay = optax.partition(
      {g: optax.add_decayed_weights(wd) if wd else optax.identity() for g, wd in decay.items()},
      labels)
  parts = []
  if cfg.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
  if cfg.name == "sgd":
    parts += [weight_decay, optax.sgd(schedule, momentum=cfg.momentum or None, nesterov=cfg.nesterov)]
  elif cfg.name == "adam":
    parts += [weight_decay, optax.adam(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)]
  else:  # adamw: decay after the Adam scaling, multiplied by the learning rate.
    parts += [optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps), weight_decay,
              optax.scale_by_learning_rate(schedule)]
  if cfg.clip_latent_weights:
    binary_mask = jax.tree.map(lambda g: g == "binary", labels)
    parts.append(optax.masked(xnorjax_optim.clip_latent_weights(cfg.clip_latent_weights), binary_mask))
  return optax.chain(*parts)
