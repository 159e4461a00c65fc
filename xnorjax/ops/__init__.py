"""Float convolution (conv2d), bit packing and the packed XNOR-popcount kernels."""

from xnorjax.ops.conv import conv2d
from xnorjax.ops.packing import pack_bits
from xnorjax.ops.packing import packed_words
from xnorjax.ops.packing import unpack_bits

__all__ = ["conv2d", "pack_bits", "packed_words", "unpack_bits"]
