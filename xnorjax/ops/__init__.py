"""Bit packing and the packed XNOR-popcount kernels."""

from xnorjax.ops.packing import pack_bits
from xnorjax.ops.packing import packed_words
from xnorjax.ops.packing import unpack_bits

__all__ = ["pack_bits", "packed_words", "unpack_bits"]
