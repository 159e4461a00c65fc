"""xnorjax: binary neural networks (XNOR-Net, BNN) for JAX and Flax NNX.

Submodules:
  xnorjax.quantizers  ste_sign, approx_sign, magnitude_aware_sign (sign-like quantizers).
  xnorjax.optim       clip_latent_weights and binary_kernel_mask (optax utilities).
  xnorjax.nn          BinaryConv and BinaryDense (Flax NNX), drop-in for nnx.Conv / nnx.Linear.
  xnorjax.ops         pack_bits and the packed XNOR-popcount kernels (C++ XLA FFI custom calls).
  xnorjax.summary     summary(model, input_shape): larq-style per-layer parameters, memory, MACs.
  xnorjax.models      vgg16 / bin_vgg16, nin / bin_nin, resnet18 / bin_resnet18 by name.
  xnorjax.deploy      trained binary models exported in packed form and run on the kernels.
"""

from xnorjax import nn
from xnorjax import ops
from xnorjax import optim
from xnorjax import quantizers
# The function shadows its module as an attribute (`xnorjax.summary(model, shape)`); the module's
# other names stay importable: `from xnorjax.summary import ModelSummary`.
from xnorjax.summary import summary

from xnorjax._native import ExtensionNotBuiltError
from xnorjax._native import extension_available
from xnorjax._native import require_extension

__version__ = "0.1.0"

__all__ = [
    "ExtensionNotBuiltError",
    "extension_available",
    "nn",
    "ops",
    "optim",
    "quantizers",
    "require_extension",
    "summary",
]
