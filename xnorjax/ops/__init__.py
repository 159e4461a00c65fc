"""Float convolution (conv2d), bit packing and the packed XNOR-popcount kernels."""

from xnorjax.ops.conv import conv2d
from xnorjax.ops.packing import pack_bits
from xnorjax.ops.packing import packed_words
from xnorjax.ops.packing import unpack_bits
from xnorjax.ops.xnor import fold_batch_norm
from xnorjax.ops.xnor import xnor_conv
from xnorjax.ops.xnor import xnor_dense

__all__ = [
    "conv2d", "fold_batch_norm", "pack_bits", "packed_words", "unpack_bits", "xnor_conv",
    "xnor_dense",
]
