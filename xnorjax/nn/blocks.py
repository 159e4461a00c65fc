"""BinaryConvBlock: XNOR-Net's block order, BatchNorm -> binarize input -> binary conv.

As the reference implementation's `BinConv2d` (jiecaoyu/XNOR-Net-PyTorch): the BatchNorm before
the sign centres and scales the real-valued input so that its sign carries information; pooling
stays outside the block. The BatchNorm defaults follow that code (eps 1e-4, PyTorch momentum 0.1,
which is Flax momentum 0.9).
"""

from __future__ import annotations

from typing import Callable, Optional

from flax import nnx
import jax
import jax.numpy as jnp

from xnorjax.nn import binary_layers


class BinaryConvBlock(nnx.Module):
  """Optional BatchNorm, then a BinaryConv (which binarizes its input), then an optional activation.

  Args mirror `BinaryConv` (defaults: XNOR-Net's "ste_sign" input and "magnitude_aware_sign"
  kernel), plus `use_batch_norm`, `batch_norm_momentum`, `batch_norm_epsilon` and `activation`
  (e.g. `nnx.relu`, applied after the conv; None for none). The BatchNorm follows the module's
  train/eval mode (`model.train()` / `model.eval()`).
  """

  def __init__(self, in_features: int, out_features: int, kernel_size, *, strides=1,
               padding="SAME", input_quantizer="ste_sign", kernel_quantizer="magnitude_aware_sign",
               pad_value: float = 0.0, activation_scaling: bool = False, use_bias: bool = False,
               use_batch_norm: bool = True, batch_norm_momentum: float = 0.9,
               batch_norm_epsilon: float = 1e-4,
               activation: Optional[Callable[[jax.Array], jax.Array]] = None,
               kernel_init=binary_layers.default_kernel_init,
               bias_init=binary_layers.default_bias_init, dtype=None, param_dtype=jnp.float32,
               implementation: str = "auto", formulation: str = "auto", rngs: nnx.Rngs):
    if activation is not None and not callable(activation):
      raise TypeError(f"activation must be a callable or None, got {type(activation).__name__}")
    self.batch_norm = (nnx.BatchNorm(in_features, momentum=batch_norm_momentum,
                                     epsilon=batch_norm_epsilon, dtype=dtype,
                                     param_dtype=param_dtype, rngs=rngs)
                       if use_batch_norm else None)
    self.conv = binary_layers.BinaryConv(
        in_features, out_features, kernel_size, strides=strides, padding=padding,
        input_quantizer=input_quantizer, kernel_quantizer=kernel_quantizer, pad_value=pad_value,
        activation_scaling=activation_scaling, use_bias=use_bias, kernel_init=kernel_init,
        bias_init=bias_init, dtype=dtype, param_dtype=param_dtype,
        implementation=implementation, formulation=formulation, rngs=rngs)
    self.activation = activation

  def __call__(self, inputs: jax.Array) -> jax.Array:
    x = inputs if self.batch_norm is None else self.batch_norm(inputs)
    y = self.conv(x)
    return y if self.activation is None else self.activation(y)
