"""The four choices of how a product is computed, and their names (the one place that defines them).

implementation (a layer's, `xnorjax.nn.BinaryConv` / `BinaryDense` / `xnorjax.nn.functional`):
  how the binarized product of a layer runs, `LAYER_IMPLEMENTATIONS`:
    "float"   a float conv / dot on the +-1 and alpha values (`xnorjax.ops.conv2d`, `jnp.dot`).
    "packed"  the packed XNOR-popcount op forward (`xnor_conv` / `xnor_dense`, alpha fused in the
              epilogue); backward the "float" product's vjp, so gradients are unchanged. Needs a
              sign input quantizer and a sign or scaled-sign kernel quantizer
              (`xnorjax.quantizers.sign_like`).
    "auto"    "packed" where it reproduces the layer, the extension is built and the backend is
              the CPU; "float" otherwise (GPUs included, until the CUDA kernels are verified
              there).
implementation (an op's, `xnor_conv`, `xnor_dense`, `pack_bits`): `OP_IMPLEMENTATIONS`:
    "kernel"     the C++ (CPU) or CUDA kernel, an XLA FFI custom call; `ExtensionNotBuiltError`
                 when the extension is not built.
    "reference"  the pure-JAX reference (any platform; the same values).
    "auto"       the kernel where one is registered for the platform, else the reference
                 (`pack_bits`: always the reference, which fuses with its producer).
isa (`xnor_conv`, `xnor_dense`): which CPU kernel, `ISAS`: "avx512" (AVX-512 VPOPCNTDQ), "avx2",
  "portable" (plain C++), or "auto" (the fastest this CPU runs). All give identical results. The
  FFI attribute `impl` carries the extension's code of the name (`xnorjax._ffi.xnor.ISA_CODES`);
  on CUDA every ISA code means "auto", and the CUDA module's own codes (`_ffi_cuda.IMPL_SIMPLE`,
  `IMPL_MMA`, `IMPL_WGMMA`) force one GPU path.
formulation (`xnorjax.ops.conv2d`, and the float layers and "float" products that use it): how a
  float conv is computed, `xnorjax.ops.conv.FORMULATIONS` (see `xnorjax.ops.conv`).
"""

from __future__ import annotations

LAYER_IMPLEMENTATIONS = ("auto", "packed", "float")
OP_IMPLEMENTATIONS = ("auto", "kernel", "reference")
ISAS = ("auto", "avx512", "avx2", "portable")


def check_choice(value, choices, argument: str):
  """`value` if it is one of `choices`, else a ValueError naming `argument` and the valid values."""
  if not isinstance(value, str) or value not in choices:
    raise ValueError(f"{argument} must be one of {tuple(choices)}, got {value!r}")
  return value
