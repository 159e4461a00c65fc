"""BinaryConvBlock: XNOR-Net's block, BatchNorm -> binarize input -> binary conv.

As the reference implementation's `BinConv2d` (jiecaoyu/XNOR-Net-PyTorch): the BatchNorm before
the sign centres and scales the real-valued input so that its sign carries information; pooling
stays outside the block. The reference VGG adds a BatchNorm after the conv (`output_batch_norm`).
"""

from __future__ import annotations

from typing import Callable, Optional

from flax import nnx
import jax
import jax.numpy as jnp

from xnorjax.nn import binary_layers
from xnorjax.nn import inference

# PyTorch's BatchNorm2d defaults, which the model zoo trains with (PyTorch's momentum 0.1 is Flax's
# 0.9: running = 0.9 * running + 0.1 * batch).
BATCH_NORM_MOMENTUM = 0.9
BATCH_NORM_EPSILON = 1e-5


class BinaryConvBlock(nnx.Module):
  """Optional BatchNorm, a BinaryConv (which binarizes its input), an optional BatchNorm, then an
  optional activation.

  Args mirror `BinaryConv` (defaults: XNOR-Net's "ste_sign" input and "magnitude_aware_sign"
  kernel), plus
    use_batch_norm: the BatchNorm before the conv (`self.batch_norm`; True).
    output_batch_norm: a BatchNorm after the conv (`self.output_batch_norm`; False), as the
      reference XNOR-Net VGG and the zoo's bin_vgg16 and bin_small_cnn.
    batch_norm_momentum, batch_norm_epsilon: of both BatchNorms; the defaults are PyTorch's
      BatchNorm2d defaults (eps 1e-5, momentum 0.1 = Flax's 0.9), what the zoo trains with (its
      NIN passes the reference NIN's eps 1e-4).
    activation: e.g. `nnx.relu`, applied last; None for none.
  The BatchNorms follow the module's train/eval mode (`model.train()` / `model.eval()`).
  """

  def __init__(self, in_features: int, out_features: int, kernel_size, *, strides=1,
               padding="SAME", input_quantizer="ste_sign", kernel_quantizer="magnitude_aware_sign",
               pad_value: float = 0.0, activation_scaling: bool = False, use_bias: bool = False,
               use_batch_norm: bool = True, output_batch_norm: bool = False,
               batch_norm_momentum: float = BATCH_NORM_MOMENTUM,
               batch_norm_epsilon: float = BATCH_NORM_EPSILON,
               activation: Optional[Callable[[jax.Array], jax.Array]] = None,
               kernel_init=binary_layers.default_kernel_init,
               bias_init=binary_layers.default_bias_init, dtype=None, param_dtype=jnp.float32,
               implementation: str = "auto", formulation: str = "auto", rngs: nnx.Rngs):
    if activation is not None and not callable(activation):
      raise TypeError(f"activation must be a callable or None, got {type(activation).__name__}")

    def batch_norm(features):
      return nnx.BatchNorm(features, momentum=batch_norm_momentum, epsilon=batch_norm_epsilon,
                           dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    self.batch_norm = batch_norm(in_features) if use_batch_norm else None
    self.conv = binary_layers.BinaryConv(
        in_features, out_features, kernel_size, strides=strides, padding=padding,
        input_quantizer=input_quantizer, kernel_quantizer=kernel_quantizer, pad_value=pad_value,
        activation_scaling=activation_scaling, use_bias=use_bias, kernel_init=kernel_init,
        bias_init=bias_init, dtype=dtype, param_dtype=param_dtype,
        implementation=implementation, formulation=formulation, rngs=rngs)
    self.output_batch_norm = batch_norm(out_features) if output_batch_norm else None
    self.activation = activation

  def __call__(self, inputs: jax.Array) -> jax.Array:
    x = inputs if self.batch_norm is None else self.batch_norm(inputs)
    y = self.conv(x)
    if self.output_batch_norm is not None:
      y = self.output_batch_norm(y)
    return y if self.activation is None else self.activation(y)

  def inference_program(self) -> list:
    """The block in evaluation mode, as `xnorjax.deploy` exports it."""
    steps = [m for m in (self.batch_norm, self.conv, self.output_batch_norm) if m is not None]
    if self.activation is not None:
      steps.append(inference.activation(self.activation))
    return steps
