"""xnorjax: binary neural networks (XNOR-Net, BNN) for JAX and Flax NNX.

Submodules:
  xnorjax.quantizers  ste_sign, approx_sign, magnitude_aware_sign, latent-weight clipping.
  xnorjax.nn          BinaryConv and BinaryDense (Flax NNX), drop-in for nnx.Conv / nnx.Linear.
  xnorjax.ops         pack_bits and the packed XNOR-popcount kernels (C++ XLA FFI custom calls).
"""

from xnorjax import nn
from xnorjax import ops
from xnorjax import quantizers

from xnorjax._native import ExtensionNotBuiltError
from xnorjax._native import extension_available
from xnorjax._native import require_extension

__version__ = "0.1.0"

__all__ = [
    "ExtensionNotBuiltError",
    "extension_available",
    "nn",
    "ops",
    "quantizers",
    "require_extension",
]
