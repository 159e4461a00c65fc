"""Float convolution (conv2d), bit packing and the packed XNOR-popcount kernels.

How each runs is chosen by name: a layer's and an op's `implementation`, the CPU kernel's `isa`, a
float conv's `formulation`; `xnorjax.ops.implementations` defines and documents the four.
"""

from xnorjax.ops import implementations
from xnorjax.ops.conv import conv2d
from xnorjax.ops.packing import pack_bits
from xnorjax.ops.packing import packed_words
from xnorjax.ops.packing import unpack_bits
from xnorjax.ops.xnor import fold_batch_norm
from xnorjax.ops.xnor import xnor_conv
from xnorjax.ops.xnor import xnor_dense

__all__ = [
    "conv2d", "fold_batch_norm", "implementations", "pack_bits", "packed_words", "unpack_bits",
    "xnor_conv", "xnor_dense",
]
