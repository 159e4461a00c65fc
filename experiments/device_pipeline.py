"""On-device input pipeline (config.data.on_device): the splits live on the accelerators as uint8.

The host sends only what decides a batch, per chunk of steps: the epoch permutation's indices and
the crop offsets and flip flags of `input_pipeline.augmentation_params`, all from
`input_pipeline.train_batch_indices`. The device gathers the images, crops them from zero padding
and flips them with the same index formula as `input_pipeline.crop_and_flip`, so its batches are
the host pipeline's, byte for byte, and a resumed run sees the batches an uninterrupted one sees.

Placement: every split is replicated on every device of the mesh (CIFAR-10's 45,000 training
images are 138 MB, nothing next to an accelerator's memory). A random permutation sends each batch
example to an arbitrary device, so a split sharded over the mesh would need an all-to-all exchange
per step; replicated, each device gathers its own share of the batch locally.

Training runs `jax.lax.scan` over a chunk of `length` steps per dispatch (one compilation: a chunk
cut short by a logging / evaluation / checkpoint step or the end of the run skips its remaining
steps with `lax.cond`). Evaluation scans over a split's batches with the last one masked.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from experiments import input_pipeline

P = jax.sharding.PartitionSpec


def put_global(array: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
  """`array` (the same whole array on every process) as a global jax.Array with `sharding`."""
  array = np.asarray(array)
  return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


@functools.partial(jax.tree_util.register_dataclass, data_fields=["images", "labels"],
                   meta_fields=[])
@dataclasses.dataclass(frozen=True)
class DeviceSplit:
  """A split's images (uint8, [N, H, W, 3]) and labels (int32, [N]), replicated on a mesh."""
  images: jax.Array
  labels: jax.Array

  def __len__(self):
    return self.labels.shape[0]


def to_device(split: input_pipeline.Split, mesh: jax.sharding.Mesh) -> DeviceSplit:
  replicated = jax.sharding.NamedSharding(mesh, P())
  return DeviceSplit(put_global(split.images, replicated), put_global(split.labels, replicated))


def crop_and_flip(images, offsets, flips, padding: int):
  """`input_pipeline.crop_and_flip` in JAX (the same gather, so the same bytes)."""
  n, h, w, _ = images.shape
  if padding:
    images = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  rows = offsets[:, :1] + jnp.arange(h)[None, :]
  cols = jnp.where(flips[:, None], w - 1 - jnp.arange(w)[None, :], jnp.arange(w)[None, :])
  cols = offsets[:, 1:] + cols
  return images[jnp.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def gather_batch(split: DeviceSplit, idx, offsets, flips, *, padding: int, batch_sharding=None):
  """The (images, labels) of one global batch: split rows `idx`, cropped and flipped when
  `offsets` is given. `batch_sharding` keeps the batch sharded over the data axis."""
  constrain = ((lambda x: jax.lax.with_sharding_constraint(x, batch_sharding))
               if batch_sharding is not None else (lambda x: x))
  images = constrain(split.images[idx])
  if offsets is not None:
    images = constrain(crop_and_flip(images, offsets, flips, padding))
  return images, constrain(split.labels[idx])


# ------------------------------------------------------------------------------------------------
# Training: chunks of steps.
# ------------------------------------------------------------------------------------------------

def chunk_inputs(num_examples: int, spec: input_pipeline.TrainBatchSpec, start_step: int,
                 num_steps: int, length: int) -> dict[str, np.ndarray]:
  """Host-side index arrays of steps start_step .. start_step + num_steps - 1, padded to `length`
  steps: idx [length, B] int32, valid [length] bool and, with augmentation, offsets
  [length, B, 2] int32 and flips [length, B] bool (padding steps: zeros, valid False)."""
  if not 0 < num_steps <= length:
    raise ValueError(f"num_steps={num_steps} must be in [1, length={length}]")
  b = spec.batch_size
  out = {"idx": np.zeros((length, b), np.int32), "valid": np.arange(length) < num_steps}
  if spec.augment:
    out.update(offsets=np.zeros((length, b, 2), np.int32), flips=np.zeros((length, b), bool))
  steps_per_epoch = num_examples // b
  epoch, order = None, None
  for i, step in enumerate(range(start_step, start_step + num_steps)):
    if step // steps_per_epoch != epoch:
      epoch = step // steps_per_epoch
      order = input_pipeline.epoch_permutation(num_examples, spec.seed, epoch)
    idx, offsets, flips = input_pipeline.train_batch_indices(num_examples, spec, step, order)
    out["idx"][i] = idx
    if spec.augment:
      out["offsets"][i], out["flips"][i] = offsets, flips
  return out


def put_chunk(inputs: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """`chunk_inputs` on the mesh: the batch axis (axis 1) sharded over "data", `valid` replicated."""
  return {k: put_global(v, jax.sharding.NamedSharding(mesh, P() if k == "valid" else P(None, "data")))
          for k, v in inputs.items()}


def make_train_chunk(step_fn: Callable, *, padding: int, batch_sharding) -> Callable:
  """(state, split: DeviceSplit, chunk) -> (state, metrics stacked over the chunk's steps).

  `step_fn(state, images, labels, *step_args) -> (state, metrics)` is one training step
  (trainer.train_step with its settings bound; `step_args`, given to the chunk after `chunk`, are
  arrays every step reads, such as a distillation teacher's variables); steps whose `valid` flag is
  False leave the state alone and report zero metrics.
  """

  def train_chunk(state, split: DeviceSplit, chunk, *step_args):
    def body(state, xs):
      images, labels = gather_batch(split, xs["idx"], xs.get("offsets"), xs.get("flips"),
                                    padding=padding, batch_sharding=batch_sharding)
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                           jax.eval_shape(step_fn, state, images, labels, *step_args)[1])
      return jax.lax.cond(xs["valid"], lambda s: step_fn(s, images, labels, *step_args),
                          lambda s: (s, zeros), state)

    return jax.lax.scan(body, state, chunk)

  return train_chunk


def chunk_end(step: int, total_steps: int, length: int, *intervals: int) -> int:
  """The end (exclusive) of the chunk starting at `step`: at most `length` steps, ending at the
  first multiple of any of `intervals` after `step`, and at `total_steps` at the latest."""
  end = min(step + length, total_steps)
  for every in intervals:
    end = min(end, (step // every + 1) * every)
  return end


# ------------------------------------------------------------------------------------------------
# Evaluation.
# ------------------------------------------------------------------------------------------------

def make_evaluate(eval_fn: Callable, batch_size: int, batch_sharding) -> Callable:
  """(params, rest, split: DeviceSplit) -> summed `eval_fn` outputs over the split (to jit).

  `eval_fn(params, rest, images, labels, mask)` is trainer.eval_step with its settings bound; the
  batches are those of `input_pipeline.eval_batches` (the last one padded with row 0, masked).
  """

  def evaluate(params, rest, split: DeviceSplit):
    n = len(split)
    num_batches = -(-n // batch_size)

    def body(totals, i):
      idx = i * batch_size + jnp.arange(batch_size)
      mask = idx < n
      images, labels = gather_batch(split, jnp.where(mask, idx, 0), None, None, padding=0,
                                    batch_sharding=batch_sharding)
      mask = jax.lax.with_sharding_constraint(mask, batch_sharding)
      out = eval_fn(params, rest, images, labels, mask)
      return jax.tree.map(jnp.add, totals, out), None

    # Sums start from zero (0 + x == x exactly, so the sums are those of the host's loop).
    out_shape = jax.eval_shape(
        eval_fn, params, rest, jax.ShapeDtypeStruct((batch_size, *split.images.shape[1:]),
                                                    split.images.dtype),
        jax.ShapeDtypeStruct((batch_size,), split.labels.dtype),
        jax.ShapeDtypeStruct((batch_size,), jnp.bool_))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), out_shape)
    return jax.lax.scan(body, zeros, jnp.arange(num_batches))[0]

  return evaluate


class Evaluator:
  """Mean loss and accuracy over host splits, evaluated on the device: each split is copied to
  the mesh on first use and kept there."""

  def __init__(self, eval_fn: Callable, batch_size: int, mesh: jax.sharding.Mesh):
    self._mesh = mesh
    replicated = jax.sharding.NamedSharding(mesh, P())
    batch_sharding = jax.sharding.NamedSharding(mesh, P("data"))
    self._evaluate = jax.jit(make_evaluate(eval_fn, batch_size, batch_sharding),
                             out_shardings=replicated)
    self._splits: dict[int, tuple[input_pipeline.Split, DeviceSplit]] = {}

  def device_split(self, split: input_pipeline.Split) -> DeviceSplit:
    if id(split) not in self._splits:  # The host split is kept too: its id stays unique.
      self._splits[id(split)] = (split, to_device(split, self._mesh))
    return self._splits[id(split)][1]

  def __call__(self, state, split: input_pipeline.Split) -> dict:
    totals = self._evaluate(state["params"], state["rest"], self.device_split(split))
    return mean_metrics(totals)


def mean_metrics(totals) -> dict:
  """{loss, accuracy} from summed eval_step outputs (loss_sum, correct, count)."""
  totals = jax.device_get(totals)
  count = int(totals["count"])
  return {"loss": float(totals["loss_sum"]) / count, "accuracy": float(totals["correct"]) / count}
