"""Flax NNX layers for binary networks: BinaryConv, BinaryDense, BinaryConvBlock."""

from xnorjax.nn import functional
from xnorjax.nn.binary_layers import BinaryConv
from xnorjax.nn.binary_layers import BinaryDense
from xnorjax.nn.blocks import BinaryConvBlock

__all__ = ["BinaryConv", "BinaryConvBlock", "BinaryDense", "functional"]
