"""Flax NNX layers for binary networks: BinaryConv, BinaryDense, BinaryConvBlock, and ReActNet's
RSign / RPReLU (`xnorjax.nn.react`).

`xnorjax.nn.inference`: the steps with which a module describes its evaluation-mode computation
for `xnorjax.deploy` (`inference_program`).
"""

from xnorjax.nn import functional
from xnorjax.nn import inference
from xnorjax.nn.binary_layers import BinaryConv
from xnorjax.nn.binary_layers import BinaryDense
from xnorjax.nn.blocks import BinaryConvBlock
from xnorjax.nn.react import RPReLU
from xnorjax.nn.react import RSign

__all__ = ["BinaryConv", "BinaryConvBlock", "BinaryDense", "RPReLU", "RSign", "functional",
           "inference"]
