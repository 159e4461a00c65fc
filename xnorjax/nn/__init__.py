"""Flax NNX layers for binary networks: BinaryConv, BinaryDense, BinaryConvBlock.

`xnorjax.nn.inference`: the steps with which a module describes its evaluation-mode computation
for `xnorjax.deploy` (`inference_program`).
"""

from xnorjax.nn import functional
from xnorjax.nn import inference
from xnorjax.nn.binary_layers import BinaryConv
from xnorjax.nn.binary_layers import BinaryDense
from xnorjax.nn.blocks import BinaryConvBlock

__all__ = ["BinaryConv", "BinaryConvBlock", "BinaryDense", "functional", "inference"]
