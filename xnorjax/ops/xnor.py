"""Packed XNOR-popcount convolution and dense layers: exact +-1 dot products from 1-bit operands.

`xnor_conv(x, kernel)` and `xnor_dense(x, kernel)` take float (or bool) arrays, binarized with
sign(0) = +1 and packed inside, or arrays already packed by `pack_bits` (activations along their
last axis, kernels along their input axis: `pack_bits(kernel, axis=-2)`; then `channels` /
`features` gives the true bit count). They return the exact int32 dot products of the +-1 values,
or, fused, `dot * scale + bias` in float32 (per output channel: XNOR-Net's alpha, and a following
BatchNorm folded in by `fold_batch_norm`), or the packed signs of that (the next layer's input).

Where a kernel is registered for the platform (C++ on CPU: AVX-512 VPOPCNTDQ, AVX2 or portable,
chosen at run time; CUDA when built) the op is an XLA FFI custom call; elsewhere, or with
implementation="reference", a pure-JAX reference computes the same values with a float conv /
matmul (`implementation` and `isa`: see `xnorjax.ops.implementations`).

The FFI contract (shared by ffi/cpu and ffi/cuda; the geometry is ffi/conv_geometry.h):
  bit 1 = +1; value j is bit j % 32 of word j // 32; tail bits of the last word are 0.
  "xnorjax_xnor_conv_{i32,f32,packed}": x u32[N, H, W, Cw], w u32[O, KH, KW, Cw] (each output
    channel's bits contiguous; this wrapper transposes from the public HWIO-packed layout), and
    for f32 / packed scale f32[O], bias f32[O]. Results s32[N, OH, OW, O] (dot),
    f32[N, OH, OW, O] (dot * scale + bias), u32[N, OH, OW, ceil(O / 32)] (bits of that >= 0).
    int64 attributes: channels, stride_h, stride_w, pad_top, pad_bottom, pad_left, pad_right,
    pad_value (-1, 0, +1: the value padded positions hold), impl (on CPU the ISA's code,
    `_ffi.xnor.ISA_CODES[isa]`; on CUDA those all mean auto, and `_ffi_cuda.IMPL_SIMPLE`,
    `IMPL_MMA`, `IMPL_WGMMA` pick a path).
  "xnorjax_xnor_dense_{i32,f32,packed}": x u32[M, Kw], w u32[N, Kw] (+ scale, bias f32[N]);
    results s32[M, N] / f32[M, N] / u32[M, ceil(N / 32)]; attributes features, impl.
  What this wrapper calls: "xnorjax_xnor_conv_{i32,f32,packed}_hwio" and
    "xnorjax_xnor_dense_{i32,f32,packed}_kn", the same with the weights in their public packed
    layout as is (conv w u32[KH, KW, Cw, O], dense w u32[Kw, N]), so no weight transpose runs at
    every call.
  CUDA targets have a second result, u8[_ffi_cuda.scratch_bytes(...)]: the tensor-core path's
    scratch, which XLA allocates with the call's buffers (`ffi_kernel_call`).

Transformations: the ops work under `jit`; under `vmap` (a `custom_vmap` rule) a batch of inputs
is folded into the kernel's batch axis (one call), and batched weights run one call per example.
In a computation sharded over several devices the calls partition along the batch axis
(`jax.experimental.custom_partitioning`, with a Shardy sharding rule): each device runs the kernel
on its shard of the batch with the weights, scale and bias replicated; a sharding of any other axis
is gathered first. (`jax.ffi.register_ffi_target_as_batch_partitionable` does not fit: it shards
every operand along its leading axis, the weights' output channels included.)
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from xnorjax import _native
from xnorjax.ops import conv as conv_lib
from xnorjax.ops import implementations
from xnorjax.ops import partitioning
from xnorjax.ops.packing import pack_bits
from xnorjax.ops.packing import packed_words
from xnorjax.ops.packing import unpack_bits

IMPLEMENTATIONS = implementations.OP_IMPLEMENTATIONS
ISAS = implementations.ISAS
PAD_VALUES = (-1.0, 0.0, 1.0)
_OUTPUTS = ("i32", "f32", "packed")
_EXACT_F32_BITS = 1 << 24  # float32 sums of +-1 are exact up to 2**24 terms
# Shardy rules of the (x, w, scale, bias) -> y calls: only the batch factor n may stay sharded.
_CONV_RULE = "n h w c, kh kw cw o, o, o -> n oh ow p"
_DENSE_RULE = "n k, kw o, o, o -> n p"


# ----------------------------------------------------------------------------------------------
# Static parameters of one call.


class _ConvParams(NamedTuple):
  channels: int
  strides: tuple[int, int]
  pads: tuple[tuple[int, int], tuple[int, int]]
  pad_value: int
  output: str
  isa: str
  implementation: str


class _DenseParams(NamedTuple):
  features: int
  output: str
  isa: str
  implementation: str


# ----------------------------------------------------------------------------------------------
# Pure-JAX reference (any platform): unpack to +-1 and use XLA's conv / matmul.


def _epilogue_reference(dot: jax.Array, scale: jax.Array, bias: jax.Array, output: str):
  if output == "i32":
    return dot
  y = dot.astype(jnp.float32) * scale + bias
  return y if output == "f32" else pack_bits(y, implementation="reference")


def _conv_reference(x, w, scale, bias, p: _ConvParams):
  bits = w.shape[0] * w.shape[1] * p.channels
  dtype = jnp.float32 if bits < _EXACT_F32_BITS else jnp.int32
  xs = unpack_bits(x, p.channels, axis=-1, dtype=dtype)
  ws = unpack_bits(w, p.channels, axis=-2, dtype=dtype)
  xs = jnp.pad(xs, ((0, 0), p.pads[0], p.pads[1], (0, 0)), constant_values=p.pad_value)
  dot = lax.conv_general_dilated(xs, ws, p.strides, "VALID",
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                 precision=lax.Precision.HIGHEST, preferred_element_type=dtype)
  return _epilogue_reference(dot.astype(jnp.int32), scale, bias, p.output)


def _dense_reference(x, w, scale, bias, p: _DenseParams):
  dtype = jnp.float32 if p.features < _EXACT_F32_BITS else jnp.int32
  xs = unpack_bits(x, p.features, axis=-1, dtype=dtype)
  ws = unpack_bits(w, p.features, axis=-2, dtype=dtype)
  dot = jnp.matmul(xs, ws, precision=lax.Precision.HIGHEST, preferred_element_type=dtype)
  return _epilogue_reference(dot.astype(jnp.int32), scale, bias, p.output)


# ----------------------------------------------------------------------------------------------
# FFI calls and the platform choice. The wrapper's weights are in the public packed layout
# (conv u32[KH, KW, Cw, O], dense u32[Kw, N]). The contract targets (on CPU and CUDA) take them
# output-major, transposed here; the "_hwio" / "_kn" targets (both platforms) read the public
# layout as is, so no weight transpose runs per call: the wrapper calls those where registered.


def _result_type(rows_shape: tuple[int, ...], out_channels: int, output: str):
  if output == "packed":
    return jax.ShapeDtypeStruct(rows_shape + (packed_words(out_channels),), jnp.uint32)
  dtype = jnp.int32 if output == "i32" else jnp.float32
  return jax.ShapeDtypeStruct(rows_shape + (out_channels,), dtype)


def ffi_kernel_call(target: str, result, scratch: Optional[tuple[int, ...]] = None):
  """`jax.ffi.ffi_call(target, result)`, or for a CUDA target (`scratch` given) the call with a
  second result, the tensor-core path's scratch buffer, which XLA allocates and this drops.

  `scratch` is the call's (N, H, W, Cw, KH, KW, O) (a dense layer: (M, 1, 1, Kw, 1, 1, N)), sized
  by `xnorjax._ffi_cuda.scratch_bytes`. For calling the targets directly (tests, gpu_check)."""
  if scratch is None:
    return jax.ffi.ffi_call(target, result)
  from xnorjax import _ffi_cuda  # pylint: disable=g-import-not-at-top
  scratch_type = jax.ShapeDtypeStruct((_ffi_cuda.scratch_bytes(*scratch),), jnp.uint8)
  call = jax.ffi.ffi_call(target, (result, scratch_type))
  return lambda *args, **attrs: call(*args, **attrs)[0]


def _conv_ffi(x, w, scale, bias, p: _ConvParams, input_major: bool, cuda: bool = False):
  _native.require_extension()
  n, h, wd, cw = x.shape
  kh, kw, _, o = w.shape
  oh, ow = conv_lib.output_hw((h, wd), (kh, kw), p.strides, p.pads)
  target = f"xnorjax_xnor_conv_{p.output}" + ("_hwio" if input_major else "")
  if not input_major:
    w = jnp.transpose(w, (3, 0, 1, 2))  # [O, KH, KW, Cw]: each output channel's bits contiguous
  call = ffi_kernel_call(target, _result_type((n, oh, ow), o, p.output),
                         (n, h, wd, cw, kh, kw, o) if cuda else None)
  operands = (x, w) if p.output == "i32" else (x, w, scale, bias)
  return call(*operands, channels=np.int64(p.channels), stride_h=np.int64(p.strides[0]),
              stride_w=np.int64(p.strides[1]), pad_top=np.int64(p.pads[0][0]),
              pad_bottom=np.int64(p.pads[0][1]), pad_left=np.int64(p.pads[1][0]),
              pad_right=np.int64(p.pads[1][1]), pad_value=np.int64(p.pad_value),
              impl=np.int64(isa_code(p.isa)))


def _dense_ffi(x, w, scale, bias, p: _DenseParams, input_major: bool, cuda: bool = False):
  _native.require_extension()
  target = f"xnorjax_xnor_dense_{p.output}" + ("_kn" if input_major else "")
  m, kw = x.shape
  n = w.shape[1]
  call = ffi_kernel_call(target, _result_type((m,), n, p.output),
                         (m, 1, 1, kw, 1, 1, n) if cuda else None)
  operands = (x, w if input_major else w.T) if p.output == "i32" else (
      x, w if input_major else w.T, scale, bias)
  return call(*operands, features=np.int64(p.features), impl=np.int64(isa_code(p.isa)))


@functools.cache
def _cuda_targets() -> frozenset[str]:
  """FFI targets the CUDA module registers (empty when it is not built)."""
  if not _native.cuda_kernels_available():
    return frozenset()
  from xnorjax import _ffi_cuda  # pylint: disable=g-import-not-at-top
  return frozenset(_ffi_cuda.registrations())


def _input_major_target(target: str) -> str:
  """The target that reads the weights in the public packed layout (no transpose per call)."""
  return target + ("_hwio" if "_conv_" in target else "_kn")


def _dispatch(ffi_fn, reference_fn, target: str, implementation: str, x, *args):
  """The CPU kernel, the CUDA kernel where registered, or the reference, per platform."""
  if implementation == "reference":
    return reference_fn(x, *args)
  cpu_fn = functools.partial(ffi_fn, input_major=True)
  if implementation == "auto" and not _native.extension_available():
    return reference_fn(x, *args)
  kernels = {"cpu": cpu_fn}
  cuda = _cuda_targets()
  if _input_major_target(target) in cuda:
    kernels["cuda"] = functools.partial(ffi_fn, input_major=True, cuda=True)
  elif target in cuda:
    kernels["cuda"] = functools.partial(ffi_fn, input_major=False, cuda=True)
  default = cpu_fn if implementation == "kernel" else reference_fn
  if implementation == "kernel":
    _native.require_extension()
  return lax.platform_dependent(x, *args, default=default, **kernels)


def _packed_rows(x):
  """x packed along its last axis (inside the partitioned call, so each device packs its shard)."""
  return x if x.dtype == jnp.uint32 else pack_bits(x, axis=-1)


def _conv_call(x, w, scale, bias, p: _ConvParams):
  x = _packed_rows(x)
  return _dispatch(functools.partial(_conv_ffi, p=p), functools.partial(_conv_reference, p=p),
                   f"xnorjax_xnor_conv_{p.output}", p.implementation, x, w, scale, bias)


def _dense_call(x, w, scale, bias, p: _DenseParams):
  x = _packed_rows(x)
  return _dispatch(functools.partial(_dense_ffi, p=p), functools.partial(_dense_reference, p=p),
                   f"xnorjax_xnor_dense_{p.output}", p.implementation, x, w, scale, bias)


# ----------------------------------------------------------------------------------------------
# vmap: fold a batch of inputs into the kernel's batch axis; batched weights run per example.


@functools.cache
def _batchable(call, params, sharding_rule: str):
  """`call(x, w, scale, bias, params)` as a custom_vmap function of the four arrays, partitioned
  along x's batch (`partitioning.batch_op`)."""

  def fn(x, w, scale, bias):
    return call(x, w, scale, bias, params)

  return partitioning.batch_op(fn, sharding_rule, (True, False, False, False))


# ----------------------------------------------------------------------------------------------
# Public API.


def isa_code(isa: str) -> int:
  """The extension's code of an ISA name (the FFI attribute `impl`); needs the extension."""
  return _native.require_extension().xnor.ISA_CODES[isa]


def _check_isa(isa: str) -> str:
  """isa if it is a valid name and, where the extension is built, one this CPU runs."""
  implementations.check_choice(isa, ISAS, "isa")
  if _native.extension_available():
    xnor = _native.require_extension().xnor
    if not xnor.isa_supported(isa_code(isa)):
      raise ValueError(f"isa={isa!r} is not supported by this CPU (features: {xnor.cpu_features()})")
  return isa


def _as_float(a: jax.Array) -> jax.Array:
  """Bools as +-1 floats (what pack_bits binarizes); floats unchanged."""
  return jnp.where(a, 1.0, -1.0).astype(jnp.float32) if a.dtype == jnp.bool_ else a


def _is_packed(a: jax.Array) -> bool:
  return a.dtype == jnp.uint32


def _check_operand(a, name: str, rank: Optional[int] = None, min_rank: int = 1) -> jax.Array:
  a = jnp.asarray(a) if not isinstance(a, jax.Array) else a
  ok = (a.dtype == jnp.uint32 or a.dtype == jnp.bool_ or jnp.issubdtype(a.dtype, jnp.floating))
  if not ok:
    raise TypeError(f"{name} must be a float or bool array (binarized here) or a uint32 array "
                    f"packed by pack_bits, got dtype {a.dtype}")
  if (rank is not None and a.ndim != rank) or a.ndim < min_rank:
    want = f"rank {rank}" if rank is not None else f"rank >= {min_rank}"
    raise ValueError(f"{name} must have {want}, got shape {a.shape}")
  if any(d == 0 for d in a.shape):
    raise ValueError(f"{name} has a zero-size axis: shape {a.shape}")
  return a


def _bit_count(x, kernel, given, x_axis_bits, kernel_axis_bits, name: str) -> int:
  """The true number of bits along the contracted axis, from whichever operand is unpacked."""
  known = [v for v in (x_axis_bits, kernel_axis_bits) if v is not None]
  if given is not None:
    if isinstance(given, bool) or not isinstance(given, (int, np.integer)) or given < 1:
      raise ValueError(f"{name} must be a positive int, got {given!r}")
    known.append(int(given))
  if not known:
    raise ValueError(f"{name} is required when both x and kernel are packed (uint32)")
  if len(set(known)) != 1:
    raise ValueError(f"{name} mismatch: x has {x_axis_bits}, kernel has {kernel_axis_bits}, "
                     f"{name}={given}")
  bits = known[0]
  if _is_packed(x) and x.shape[-1] != packed_words(bits):
    raise ValueError(f"packed x has {x.shape[-1]} words along its last axis, but {name}={bits} "
                     f"needs {packed_words(bits)}")
  if _is_packed(kernel) and kernel.shape[-2] != packed_words(bits):
    raise ValueError(f"packed kernel has {kernel.shape[-2]} words along its input axis, but "
                     f"{name}={bits} needs {packed_words(bits)}")
  return bits


def _scale_bias(scale, bias, out_channels: int):
  """f32[O] scale and bias (defaults 1 and 0), or a ValueError naming the bad one."""
  out = []
  for value, default, name in ((scale, 1.0, "scale"), (bias, 0.0, "bias")):
    v = jnp.asarray(default if value is None else value)
    if not (jnp.issubdtype(v.dtype, jnp.floating) or jnp.issubdtype(v.dtype, jnp.integer)):
      raise TypeError(f"{name} must be a float array, got dtype {v.dtype}")
    if v.ndim > 1 or (v.ndim == 1 and v.shape[0] not in (1, out_channels)):
      raise ValueError(f"{name} must be a scalar or have shape ({out_channels},), got {v.shape}")
    out.append(jnp.broadcast_to(v.astype(jnp.float32), (out_channels,)))
  return out


def _output_kind(scale, bias, pack_output: bool) -> str:
  if not isinstance(pack_output, bool):
    raise TypeError(f"pack_output must be a bool, got {pack_output!r}")
  if pack_output:
    return "packed"
  return "i32" if scale is None and bias is None else "f32"


def xnor_conv(x, kernel, *, strides=(1, 1), padding="SAME", pad_value=0.0, channels=None,
              scale=None, bias=None, pack_output: bool = False, isa: str = "auto",
              implementation: str = "auto") -> jax.Array:
  """2-D convolution of +-1 values by XNOR and popcount, NHWC x HWIO -> NHWC.

  Args:
    x: activations [N, H, W, C], float or bool (binarized: x >= 0 is +1), or uint32
      [N, H, W, ceil(C / 32)] packed by `pack_bits(x)`.
    kernel: weights [KH, KW, C, O], float or bool, or uint32 [KH, KW, ceil(C / 32), O] packed by
      `pack_bits(kernel, axis=-2)` (pack once and reuse: packing is then not repeated per call).
    strides: an int or (stride_h, stride_w).
    padding: "SAME", "VALID" (XLA's rules), an int, or ((top, bottom), (left, right)).
    pad_value: the value padded input positions hold: 0 (contributes nothing, as in float
      training), -1 or +1.
    channels: the true C; required when x and kernel are both packed.
    scale, bias: per-output-channel float32 [O] (or scalars). If either is given the result is
      float32 dot * scale + bias (XNOR-Net's alpha; fold a following BatchNorm in with
      `fold_batch_norm`).
    pack_output: return the packed signs of dot * scale + bias (bit 1 where >= 0) as uint32
      [N, OH, OW, ceil(O / 32)], ready as the next layer's packed input.
    isa: the CPU kernel: "auto" (the fastest this CPU runs), "avx512" (VPOPCNTDQ), "avx2",
      "portable".
    implementation: "auto" (the kernel where registered for the platform, else the pure-JAX
      reference), "kernel" (the kernel, or an error) or "reference".

  Returns:
    int32 [N, OH, OW, O] exact dot products of the +-1 values (with the padding), or the fused
    float32 / packed results above.
  """
  implementations.check_choice(implementation, IMPLEMENTATIONS, "implementation")
  _check_isa(isa)
  x = _check_operand(x, "x", rank=4)
  kernel = _check_operand(kernel, "kernel", rank=4)
  c = _bit_count(x, kernel, channels, None if _is_packed(x) else x.shape[-1],
                 None if _is_packed(kernel) else kernel.shape[-2], "channels")
  strides = conv_lib.normalize_pair(strides, "strides")
  kh, kw, _, out_channels = kernel.shape
  pads = conv_lib.normalize_padding(padding, x.shape[1:3], (kh, kw), strides)
  oh, ow = conv_lib.output_hw(x.shape[1:3], (kh, kw), strides, pads)
  if oh < 1 or ow < 1:
    raise ValueError(f"the padded input {x.shape[1:3]} with padding {pads} is smaller than the "
                     f"kernel ({kh}, {kw})")
  if isinstance(pad_value, bool) or float(pad_value) not in PAD_VALUES:
    raise ValueError(f"pad_value must be 0, -1 or +1, got {pad_value!r}")
  if kh * kw * c >= 2**31:
    raise ValueError(f"kernel {kh}x{kw} x {c} channels overflows int32 dot products")
  output = _output_kind(scale, bias, pack_output)
  scale, bias = _scale_bias(scale, bias, out_channels)

  x = x if _is_packed(x) else _as_float(x)
  wp = kernel if _is_packed(kernel) else pack_bits(kernel, axis=-2)
  params = _ConvParams(c, strides, pads, int(pad_value), output, isa, implementation)
  return _batchable(_conv_call, params, _CONV_RULE)(x, wp, scale, bias)


def xnor_dense(x, kernel, *, features=None, scale=None, bias=None, pack_output: bool = False,
               isa: str = "auto", implementation: str = "auto") -> jax.Array:
  """Matrix product of +-1 values by XNOR and popcount: (..., K) x (K, N) -> (..., N).

  Args:
    x: [..., K] float or bool (binarized: x >= 0 is +1), or uint32 [..., ceil(K / 32)] packed by
      `pack_bits(x)`.
    kernel: [K, N] float or bool, or uint32 [ceil(K / 32), N] packed by `pack_bits(kernel, axis=-2)`.
    features: the true K; required when x and kernel are both packed.
    scale, bias, pack_output, isa, implementation: as in `xnor_conv` (per output feature).

  Returns:
    int32 [..., N] exact dot products, float32 [..., N] dot * scale + bias, or uint32
    [..., ceil(N / 32)] packed signs of that.
  """
  implementations.check_choice(implementation, IMPLEMENTATIONS, "implementation")
  _check_isa(isa)
  x = _check_operand(x, "x", min_rank=1)
  kernel = _check_operand(kernel, "kernel", rank=2)
  k = _bit_count(x, kernel, features, None if _is_packed(x) else x.shape[-1],
                 None if _is_packed(kernel) else kernel.shape[-2], "features")
  if k >= 2**31:
    raise ValueError(f"features={k} overflows int32 dot products")
  out_features = kernel.shape[1]
  output = _output_kind(scale, bias, pack_output)
  scale, bias = _scale_bias(scale, bias, out_features)

  x = x if _is_packed(x) else _as_float(x)
  wp = kernel if _is_packed(kernel) else pack_bits(kernel, axis=-2)
  leading = x.shape[:-1]
  rows = x.reshape((-1, x.shape[-1]))
  params = _DenseParams(k, output, isa, implementation)
  y = _batchable(_dense_call, params, _DENSE_RULE)(rows, wp, scale, bias)
  return y.reshape(leading + y.shape[-1:])


def fold_batch_norm(scale, bias, mean, var, gamma=None, beta=None, epsilon: float = 1e-5):
  """(scale', bias') with dot * scale' + bias' == BatchNorm(dot * scale + bias) (inference).

  BatchNorm(y) = (y - mean) / sqrt(var + epsilon) * gamma + beta, per output channel; the result
  feeds `xnor_conv(..., scale=scale', bias=bias')` so the kernel's epilogue applies both.
  """
  inv = lax.rsqrt(jnp.asarray(var, jnp.float32) + epsilon)
  if gamma is not None:
    inv = inv * jnp.asarray(gamma, jnp.float32)
  scale = jnp.asarray(1.0 if scale is None else scale, jnp.float32)
  bias = jnp.asarray(0.0 if bias is None else bias, jnp.float32)
  new_bias = (bias - jnp.asarray(mean, jnp.float32)) * inv
  if beta is not None:
    new_bias = new_bias + jnp.asarray(beta, jnp.float32)
  return scale * inv, new_bias
