"""Data-parallel partitioning and vmap of the extension's FFI calls (an FFI call has no rule of
its own for either).

`batch_partitioned(fn, ...)` wraps `fn` with `jax.experimental.custom_partitioning` and a Shardy
sharding rule: in a computation sharded over several devices, each device runs `fn` on its shard
of the batch (the first axis of the batched operands) with the other operands replicated; a
sharding of any other axis is gathered first. A result either keeps the batch sharding, or, for a
sum over the batch (a kernel gradient), is the `psum` of the per-device results over the batch's
mesh axes, replicated. `batch_op` adds a vmap rule on top (see there).
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
from jax import lax
import jax.numpy as jnp
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec


def batch_axes(sharding):
  """The mesh axes that shard the first dimension (None: replicated)."""
  if isinstance(sharding, NamedSharding) and len(sharding.spec) > 0:
    return sharding.spec[0]
  return None


def keep_batch_sharding(result, x):
  """`result` with the batch sharding type of `x` on meshes with explicit axes (a no-op
  elsewhere): a custom_partitioning result carries no sharding type, and explicit meshes check
  types, in custom_vjp rules among others."""
  spec = jax.typeof(x).sharding.spec
  if not spec or spec[0] is None:
    return result
  return jax.sharding.reshard(result, PartitionSpec(spec[0], *([None] * (result.ndim - 1))))


def batch_partitioned(fn: Callable, sharding_rule: str, batched: Sequence[bool], *,
                      sum_over_batch: bool = False):
  """`fn(*args)` partitioned along the batch factor "n" of `sharding_rule`.

  Args:
    fn: the function of arrays to partition (one result).
    sharding_rule: its Shardy rule; the batch factor must be named "n" (first axis of every
      batched operand); every other factor is replicated.
    batched: per operand, whether its first axis is the batch.
    sum_over_batch: the result sums over the batch: each device's result is summed over the
      batch's mesh axes (replicated) instead of keeping the batch sharding.
  """
  op = custom_partitioning(fn)

  def specs(mesh, arg_shapes, result_shape):
    batch = batch_axes(arg_shapes[0].sharding)
    replicated = NamedSharding(mesh, PartitionSpec())
    sharded = lambda ndim: NamedSharding(mesh, PartitionSpec(batch, *([None] * (ndim - 1))))
    args = tuple(sharded(len(a.shape)) if b else replicated for a, b in zip(arg_shapes, batched))
    out = replicated if sum_over_batch else sharded(len(result_shape.shape))
    return batch, args, out

  def infer_sharding_from_operands(mesh, arg_shapes, result_shape):
    return specs(mesh, arg_shapes, result_shape)[2]

  def partition(mesh, arg_shapes, result_shape):
    batch, arg_specs, out_spec = specs(mesh, arg_shapes, result_shape)
    lower = fn
    if sum_over_batch and batch is not None:
      lower = lambda *args: jax.lax.psum(fn(*args), batch)
    return mesh, lower, out_spec, arg_specs

  # Every factor but the batch one, in order of first appearance (Shardy wants them sorted).
  factors = dict.fromkeys(sharding_rule.replace("->", " ").replace(",", " ").split())
  factors.pop("n")
  op.def_partition(partition=partition, infer_sharding_from_operands=infer_sharding_from_operands,
                   sharding_rule=sharding_rule, need_replication_factors=tuple(factors))
  return op


def batch_op(fn: Callable, sharding_rule: str, batched: Sequence[bool], *,
             sum_over_batch: bool = False):
  """`batch_partitioned(fn, ...)` as a custom_vmap function. Under vmap: with only the first
  operand mapped (and a result that keeps the batch), the mapped axis folds into the batch (one
  call); with nothing mapped, one call, broadcast; otherwise one call per mapped element."""
  partitioned = batch_partitioned(fn, sharding_rule, batched, sum_over_batch=sum_over_batch)

  @jax.custom_batching.custom_vmap
  def op(*args):
    return partitioned(*args)

  @op.def_vmap
  def _rule(axis_size, in_batched, *args):
    if not any(in_batched):
      y = op(*args)
      return jnp.broadcast_to(y, (axis_size,) + y.shape), True
    if in_batched[0] and not any(in_batched[1:]) and not sum_over_batch:
      x = args[0]
      y = op(x.reshape((-1,) + x.shape[2:]), *args[1:])
      return y.reshape((axis_size, x.shape[1]) + y.shape[1:]), True
    mapped = tuple(a if b else jnp.broadcast_to(a, (axis_size,) + a.shape)
                   for a, b in zip(args, in_batched))
    return lax.map(lambda a: op(*a), mapped), True

  return op
