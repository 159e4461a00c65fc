"""Float 2-D convolution (NHWC / HWIO) in several formulations, chosen per shape in one place.

XLA's CPU convolution (`lax.conv_general_dilated`) is slow, and pathological on maps no larger than
the kernel (a 2x2 512->512 forward at batch 128: 738 ms against im2col's 6; docs/float_conv.md); im2col
(the kh*kw shifted views of the padded input concatenated along channels, then one `jnp.dot` with
the kernel reshaped to (kh*kw*C, O)) has no such pathology. Formulations:
  "lax"         lax.conv_general_dilated, forward and (autodiff) backward.
  "im2col"      shifted views + one dot, forward and (autodiff) backward.
  "lax_im2col"  lax.conv forward, im2col's gradient backward (a custom_vjp: reverse mode only).
  "native"      the C++ extension's float32 conv (xnorjax/ops/float_conv.py; CPU with AVX-512F,
                stride 1): forward conv, input-gradient conv and kernel gradient at about the
                rate of XLA's best float32 matmul. A custom_vjp: reverse mode only.
  "winograd"    the C++ extension's Winograd F(4x4, 3x3) conv (xnorjax/ops/winograd.py; CPU with
                AVX-512F, 3x3 kernels, stride 1): the same three products with 4x fewer
                multiplications, on the same microkernels; rounds about 10x more than a direct
                float32 sum (relative 1e-5). A custom_vjp: reverse mode only.
  "unrolled"    for tiny maps: the conv as one matmul of the flattened input (N, H*W*C) with the
                (H*W*C, Ho*Wo*O) matrix whose block for input position p and output position q
                is the kernel tap joining them (zero where none does); its backward is the
                product's, each tap's gradient summed from its blocks (a custom_vjp: reverse
                mode only). On a 2x2 map with a 3x3 kernel each output meets 4 of the 9 taps:
                im2col multiplies the other 5 by zero padding, this does no such work, in one
                well-shaped product (128 x 2048 x 2048 for VGG16's 512-channel 2x2 layers).
  "lax_padded"  lax.conv forward and backward, every conv written with its zero padding inside the
                conv: XLA's CPU conv is 2.5-4x faster with padding than on a pre-padded input
                ("VALID"; jax.grad of a padded conv gives such a VALID conv for the kernel
                gradient), so the input gradient is a padded conv of the output gradient with the
                flipped kernel; the kernel gradient is one matmul per tap over cache-sized chunks
                of the batch. A custom_vjp: reverse mode only. Strides > 1 take lax.conv's own
                gradient.
All compute the same sum and differ only in summation order or, for "winograd", in the order and
form of the arithmetic (results agree within float rounding; tests/library/test_conv.py,
tests/kernels/test_float_conv.py, tests/kernels/test_winograd.py). `choose_formulation` is the single policy that
`formulation="auto"` applies; experiments/bench/conv_formulations.py measures it.

Padding is explicit: the input is padded with `pad_value` (0, or +-1 for binarized inputs whose
packed form has no 0), then convolved VALID, so every formulation sees the same padded input.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from xnorjax.ops import float_conv
from xnorjax.ops import winograd

FORMULATIONS = ("auto", "lax", "im2col", "lax_im2col", "lax_padded", "native", "winograd",
                "unrolled")
# "unrolled" builds a matrix of (H*W) x (Ho*Wo) kernel-sized blocks: up to this many blocks.
UNROLLED_MAX_BLOCKS = 64
# ... and building it costs as much as multiplying a few dozen examples: "auto" takes it from
# this batch on (2x2 512->512 forward + backward, unrolled vs im2col: 9.4-13.7 vs 9.6-9.8 ms at
# batch 64, 10.7-11.6 vs 18.7-19.1 at 128; docs/float_conv.md).
UNROLLED_MIN_BATCH = 64
_DN = ("NHWC", "HWIO", "NHWC")
Padding = Union[str, int, Sequence[Sequence[int]]]
Pads = tuple[tuple[int, int], tuple[int, int]]


def _is_int(v) -> bool:
  return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def normalize_pair(value, name: str) -> tuple[int, int]:
  """An int or a pair of ints (height, width), each >= 1, as a tuple."""
  if _is_int(value):
    value = (value, value)
  if (not isinstance(value, (tuple, list)) or len(value) != 2
      or not all(_is_int(v) and v >= 1 for v in value)):
    raise ValueError(f"{name} must be a positive int or a pair of positive ints, got {value!r}")
  return int(value[0]), int(value[1])


def normalize_padding(padding: Padding, input_hw: Sequence[int], kernel_hw: Sequence[int],
                      strides: Sequence[int]) -> Pads:
  """((top, bottom), (left, right)) for "SAME" / "VALID" (XLA's rules), an int, or explicit pairs."""
  if isinstance(padding, str):
    mode = padding.upper()
    if mode not in ("SAME", "VALID"):
      raise ValueError(f"padding must be 'SAME', 'VALID', an int or ((top, bottom), (left, right)), "
                       f"got {padding!r}")
    pads = lax.padtype_to_pads(tuple(input_hw), tuple(kernel_hw), tuple(strides), mode)
    return tuple((int(lo), int(hi)) for lo, hi in pads)
  if _is_int(padding):
    if padding < 0:
      raise ValueError(f"padding must be >= 0, got {padding}")
    return ((int(padding),) * 2,) * 2
  ok = (isinstance(padding, (tuple, list)) and len(padding) == 2
        and all(isinstance(p, (tuple, list)) and len(p) == 2 and all(_is_int(v) and v >= 0 for v in p)
                for p in padding))
  if not ok:
    raise ValueError(f"padding must be 'SAME', 'VALID', a non-negative int or ((top, bottom), "
                     f"(left, right)) of non-negative ints, got {padding!r}")
  return tuple((int(p[0]), int(p[1])) for p in padding)


def output_hw(input_hw: Sequence[int], kernel_hw: Sequence[int], strides: Sequence[int],
              pads: Pads) -> tuple[int, int]:
  """Output spatial size of a VALID conv on the padded input."""
  return tuple((n + lo + hi - k) // s + 1 for n, k, s, (lo, hi) in zip(input_hw, kernel_hw, strides, pads))


PolicyRule = Callable[..., Optional[str]]
_policy_rules: list[PolicyRule] = []


@contextlib.contextmanager
def policy_override(rule: PolicyRule):
  """Within the block, `choose_formulation` first asks rule(input_shape, kernel_shape, strides,
  pads) and takes its answer unless it is None, e.g. to time a variant of the policy on whole
  training steps (experiments/bench/conv_policy.py). Applies where "auto" convs are traced:
  trace (jit and lower, or first call) inside the block a function that was not traced before
  (jax reuses a function's earlier traces)."""
  _policy_rules.append(rule)
  try:
    yield
  finally:
    _policy_rules.remove(rule)


def choose_formulation(input_shape: Sequence[int], kernel_shape: Sequence[int],
                       strides: Sequence[int], pads: Pads, pad_value: float = 0.0,
                       backend: Optional[str] = None, dtype=jnp.float32,
                       native: Optional[bool] = None) -> str:
  """The formulation "auto" uses for one conv shape (the one place to tune the policy).

  Off the CPU (`backend`, default `jax.default_backend()`), "lax": on GPUs lax.conv goes to
  cuDNN. On the CPU, in order (measurements: batch 128, float32, docs/float_conv.md):

    * "unrolled" for larger-than-1x1 kernels on input and output maps of at most 4 positions
      (VGG16's 2x2 stage) with zero padding or none, from batch `UNROLLED_MIN_BATCH` on: it
      multiplies only the 4 of 9 taps that meet the map (512->512 forward + backward 10.7-11.6 ms
      against im2col's 18.7-19.1; whole vgg16 steps 0.93-0.96 of im2col's).
    * "im2col" for 1x1 kernels (a reshape and one matmul) and for the other output maps of at
      most 2x2, where lax.conv is pathological (512->512 forward 738 ms against 6.0).
    * "winograd" for 3x3 kernels on more than 8 input channels, else "native" (the extension's
      float32 convs), for stride 1 and float32 (with float32 or no preferred_element_type), when
      the extension is built and the CPU has AVX-512F (`native`, default
      `float_conv.available()`): the nine VGG16 shapes' forward + backward sum to 281 ms on
      "winograd" against 437 on "native" and 637 on "im2col". RGB first layers (at most 8 input
      channels) take "native": im2col's kernel gradient wants the output gradient transposed
      (whole steps 0.945-0.986 of im2col's for vgg16).
    * "im2col" for output maps of at most 4x4 and for inputs of at most 8 channels without
      "native": the patch matrix is small there and lax.conv slow.
    * "lax_padded" otherwise for stride 1 with zero padding of at most kernel - 1 per side:
      lax.conv's fast padded path forward and backward (XLA's CPU conv is 2.5-4x faster with its
      padding inside the conv).
    * "lax_im2col" otherwise: lax.conv's forward with im2col's backward.
  """
  for rule in reversed(_policy_rules):
    if (chosen := rule(input_shape, kernel_shape, strides, pads)) is not None:
      if chosen not in FORMULATIONS[1:]:
        raise ValueError(f"a policy_override rule returned {chosen!r}, not one of "
                         f"{FORMULATIONS[1:]}")
      return chosen
  if (backend or jax.default_backend()) != "cpu":
    return "lax"
  kh, kw, cin = kernel_shape[:3]
  ho, wo = output_hw(input_shape[1:3], (kh, kw), strides, pads)
  if (kh * kw > 1 and ho * wo <= 4 and input_shape[1] * input_shape[2] <= 4
      and input_shape[0] >= UNROLLED_MIN_BATCH
      and (pad_value == 0 or not any(p for pair in pads for p in pair))):
    return "unrolled"
  if kh * kw == 1 or ho * wo <= 4:
    return "im2col"
  if native is None:
    native = float_conv.available()
  if (native and tuple(strides) == (1, 1) and jnp.dtype(dtype) == jnp.float32
      and min(kernel_shape) > 0 and min(input_shape[1:]) > 0):
    return "winograd" if (kh, kw) == (3, 3) and cin > 8 else "native"
  if ho * wo <= 16 or cin <= 8:
    return "im2col"
  if tuple(strides) == (1, 1) and pad_value == 0 and float_conv.pads_fit((kh, kw), pads):
    return "lax_padded"
  return "lax_im2col"


def _conv_lax(x, kernel, strides, precision, preferred_element_type):
  return lax.conv_general_dilated(
      x, kernel, window_strides=strides, padding="VALID",
      dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision,
      preferred_element_type=preferred_element_type)


def _conv_im2col(x, kernel, strides, precision, preferred_element_type):
  n, h, w, c = x.shape
  kh, kw, _, o = kernel.shape
  sh, sw = strides
  ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
  views = [
      lax.slice(x, (0, i, j, 0), (n, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, c), (1, sh, sw, 1))
      for i in range(kh) for j in range(kw)
  ]
  patches = views[0] if len(views) == 1 else jnp.concatenate(views, axis=-1)
  # Patch channel order (i, j, c) is the row-major order of the HWIO kernel's first three axes.
  return jnp.dot(patches, kernel.reshape(kh * kw * c, o), precision=precision,
                 preferred_element_type=preferred_element_type)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_lax_im2col(x, kernel, strides, precision, preferred_element_type):
  return _conv_lax(x, kernel, strides, precision, preferred_element_type)


def _conv_lax_im2col_fwd(x, kernel, strides, precision, preferred_element_type):
  return _conv_lax(x, kernel, strides, precision, preferred_element_type), (x, kernel)


def _conv_lax_im2col_bwd(strides, precision, preferred_element_type, residuals, g):
  x, kernel = residuals
  _, vjp = jax.vjp(lambda a, b: _conv_im2col(a, b, strides, precision, preferred_element_type),
                   x, kernel)
  return vjp(g)


_conv_lax_im2col.defvjp(_conv_lax_im2col_fwd, _conv_lax_im2col_bwd)

# The kernel gradient is one matmul per tap, over chunks of the batch of about this many bytes of
# input and output gradient: cache-sized chunks run 1.2-2x faster than the whole batch at once
# (batch 128, float32: 64->64 at 32x32 169 -> 88 ms with 8-image chunks, 128->128 at 16x16
# 79 -> 46 ms with 16, 256->256 at 8x8 54 -> 39 ms with 32).
_KERNEL_GRAD_CHUNK_BYTES = 3 << 20


def _batch_chunks(batch: int, bytes_per_example: int) -> int:
  """How many equal chunks to split the batch into for the kernel gradient (1: no split)."""
  want = max(1, _KERNEL_GRAD_CHUNK_BYTES // max(bytes_per_example, 1))  # examples per chunk
  if want >= batch:
    return 1
  divisors = [d for d in range(1, batch + 1) if batch % d == 0]
  per_chunk = min(divisors, key=lambda d: abs(np.log(d / want)))
  if not want / 4 <= per_chunk <= want * 4:  # e.g. a prime batch: no split
    return 1
  return batch // per_chunk


def _kernel_grad_taps(x, g, kernel_hw, pads, precision):
  """dL/dK[i, j, c, o] = sum_{n, h, w} xpad[n, h + i, w + j, c] g[n, h, w, o], one matmul per tap
  (stride 1), accumulated over cache-sized chunks of the batch."""
  kh, kw = kernel_hw
  n, ho, wo, cout = g.shape
  cin = x.shape[3]

  def taps(xc, gc):
    xp = jnp.pad(xc, ((0, 0), pads[0], pads[1], (0, 0)))
    m = xc.shape[0]

    def conv_by_taps(k):  # the conv as one (rows, C) x (C, O) matmul per tap; linear in k
      return sum(jnp.dot(lax.slice(xp, (0, i, j, 0), (m, i + ho, j + wo, cin)).reshape(-1, cin),
                         k[i, j], precision=precision)
                 for i in range(kh) for j in range(kw))

    # Its transpose is the per-tap x^T g; JAX's transpose rule also handles sharded batches.
    kernel_type = jax.ShapeDtypeStruct((kh, kw, cin, cout), xc.dtype)
    return jax.linear_transpose(conv_by_taps, kernel_type)(gc.reshape(-1, cout))[0]

  # Only with a single device: a data-parallel batch sharding does not survive the split into
  # contiguous chunks (XLA all-gathers the batch instead of all-reducing partial gradients), and
  # interleaved chunks, which would keep it, lose the cache benefit.
  chunks = (_batch_chunks(n, x.dtype.itemsize * (x[0].size + g[0].size))
            if jax.device_count() == 1 else 1)
  if chunks == 1:
    return taps(x, g)
  xs = x.reshape((chunks, n // chunks) + x.shape[1:])
  gs = g.reshape((chunks, n // chunks) + g.shape[1:])
  return lax.map(lambda c: taps(*c), (xs, gs)).sum(axis=0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv_lax_padded(x, kernel, strides, pads, precision, preferred_element_type):
  return lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=_DN,
                                  precision=precision,
                                  preferred_element_type=preferred_element_type)


def _conv_lax_padded_fwd(x, kernel, strides, pads, precision, preferred_element_type):
  y = _conv_lax_padded(x, kernel, strides, pads, precision, preferred_element_type)
  return y, (x, kernel)


def _conv_lax_padded_bwd(strides, pads, precision, preferred_element_type, residuals, g):
  x, kernel = residuals
  kh, kw, cin, cout = kernel.shape
  back_pads = ((kh - 1 - pads[0][0], kh - 1 - pads[0][1]), (kw - 1 - pads[1][0], kw - 1 - pads[1][1]))
  if tuple(strides) != (1, 1) or min(p for pair in back_pads for p in pair) < 0:
    _, vjp = jax.vjp(lambda a, b: lax.conv_general_dilated(
        a, b, strides, pads, dimension_numbers=_DN, precision=precision,
        preferred_element_type=preferred_element_type), x, kernel)
    return vjp(g)
  dtype = jnp.result_type(x, kernel, g)
  xd, kd, gd = x.astype(dtype), kernel.astype(dtype), g.astype(dtype)
  # dL/dx: the output gradient convolved with the flipped kernel, input and output channels
  # swapped, padded by kernel - 1 - pad on each side (a "full" conv cropped to the input).
  flipped = jnp.flip(kd, (0, 1)).transpose(0, 1, 3, 2)
  gx = lax.conv_general_dilated(gd, flipped, (1, 1), back_pads, dimension_numbers=_DN,
                                precision=precision)
  gk = _kernel_grad_taps(xd, gd, (kh, kw), pads, precision)
  return gx.astype(x.dtype), gk.astype(kernel.dtype)


_conv_lax_padded.defvjp(_conv_lax_padded_fwd, _conv_lax_padded_bwd)


def _check_extension_conv(formulation: str, x, preferred_element_type, strides):
  """Raises a clear error when the extension's float32 convs cannot run this conv."""
  if not float_conv.available():
    raise ValueError(f"formulation={formulation!r} needs the C++ extension built (make install) and "
                     "a CPU with AVX-512F; use formulation='auto'")
  if jax.default_backend() != "cpu":
    raise ValueError(f"formulation={formulation!r} runs on the CPU backend, not "
                     f"{jax.default_backend()!r}; use formulation='auto' (lax.conv, cuDNN on GPUs)")
  if x.dtype != jnp.float32:
    raise TypeError(f"formulation={formulation!r} computes in float32, got x and kernel of dtype "
                    f"{x.dtype}")
  if preferred_element_type is not None and jnp.dtype(preferred_element_type) != jnp.float32:
    raise TypeError(f"formulation={formulation!r} accumulates and returns float32, got "
                    f"preferred_element_type={jnp.dtype(preferred_element_type)}")
  if tuple(strides) != (1, 1):
    raise ValueError(f"formulation={formulation!r} supports strides 1 only, got "
                     f"strides={tuple(strides)}")


def _explicitly_padded(x, pads, pad_value, fits: bool):
  """(x, pads) with the padding done explicitly unless it is zero and `fits` the kernel."""
  if pad_value != 0 or not fits:
    x = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=jnp.asarray(pad_value, x.dtype))
    pads = ((0, 0), (0, 0))
  return x, pads


def _conv_native(x, kernel, strides, pads, pad_value, preferred_element_type):
  """The extension's float32 conv (`float_conv.conv`), padding it cannot take done explicitly."""
  _check_extension_conv("native", x, preferred_element_type, strides)
  x, pads = _explicitly_padded(x, pads, pad_value, float_conv.pads_fit(kernel.shape[:2], pads))
  return float_conv.conv(x, kernel, pads)


def _conv_winograd(x, kernel, strides, pads, pad_value, preferred_element_type):
  """The extension's Winograd F(4x4, 3x3) conv (`winograd.conv`), padding it cannot take done
  explicitly."""
  _check_extension_conv("winograd", x, preferred_element_type, strides)
  x, pads = _explicitly_padded(x, pads, pad_value, winograd.fits(kernel.shape[:2], pads))
  return winograd.conv(x, kernel, pads)


def _unrolled_taps(input_hw, kernel_hw, strides, pads) -> dict:
  """{(p, q): (i, j)}: the kernel tap joining input position p = h*W + w and output position
  q = ho*Wo + wo, for every pair that one joins (VALID conv on the input padded by `pads`)."""
  (h, w), (kh, kw) = input_hw, kernel_hw
  ho, wo = output_hw(input_hw, kernel_hw, strides, pads)
  taps = {}
  for hi, wi, hq, wq in np.ndindex(h, w, ho, wo):
    i, j = hi + pads[0][0] - hq * strides[0], wi + pads[1][0] - wq * strides[1]
    if 0 <= i < kh and 0 <= j < kw:
      taps[(hi * w + wi, hq * wo + wq)] = (i, j)
  return taps


def _unrolled_matrix(kernel, input_hw, strides, pads):
  """(H*W*C, Ho*Wo*O): block (p, q) is the kernel tap joining p and q, zeros where none does."""
  kh, kw, c, o = kernel.shape
  ho, wo = output_hw(input_hw, (kh, kw), strides, pads)
  taps = _unrolled_taps(input_hw, (kh, kw), strides, pads)
  zero = jnp.zeros((c, o), kernel.dtype)
  rows = [jnp.stack([kernel[taps[p, q]] if (p, q) in taps else zero for q in range(ho * wo)],
                    axis=1) for p in range(input_hw[0] * input_hw[1])]  # each (C, Ho*Wo, O)
  return jnp.stack(rows).reshape(-1, ho * wo * o)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv_unrolled(x, kernel, strides, pads, precision, preferred_element_type):
  """The conv as x.reshape(N, H*W*C) @ `_unrolled_matrix`: zero padding needs no rows (padded
  positions would only multiply zeros)."""
  n, h, w, c = x.shape
  kh, kw, _, o = kernel.shape
  ho, wo = output_hw((h, w), (kh, kw), strides, pads)
  matrix = _unrolled_matrix(kernel, (h, w), strides, pads)
  y = jnp.dot(x.reshape(n, h * w * c), matrix, precision=precision,
              preferred_element_type=preferred_element_type)
  return y.reshape(n, ho, wo, o)


def _conv_unrolled_fwd(x, kernel, strides, pads, precision, preferred_element_type):
  return _conv_unrolled(x, kernel, strides, pads, precision, preferred_element_type), (x, kernel)


def _conv_unrolled_bwd(strides, pads, precision, preferred_element_type, residuals, g):
  """dx = g M^T; dM = x^T g, each kernel tap's gradient the sum of dM's blocks that are that tap
  (written out: autodiff's transpose of the matrix's assembly, 16 padded copies summed, took
  7 ms of a 2x2 512->512 layer's 19, these sums under 1)."""
  x, kernel = residuals
  n, h, w, c = x.shape
  kh, kw, _, o = kernel.shape
  dtype = jnp.result_type(x, kernel, g)
  xd, kd, gd = x.astype(dtype), kernel.astype(dtype), g.reshape(n, -1).astype(dtype)
  matrix = _unrolled_matrix(kd, (h, w), strides, pads)
  # The product's own vjp: its transpose rule also handles a sharded batch (x^T g all-reduced).
  _, product_vjp = jax.vjp(lambda a, m: jnp.dot(a, m, precision=precision), xd.reshape(n, -1),
                           matrix)
  dx, dm = product_vjp(gd)
  dx, dm = dx.reshape(x.shape), dm.reshape(h * w, c, -1, o)
  by_tap = {}
  for (p, q), tap in _unrolled_taps((h, w), (kh, kw), strides, pads).items():
    by_tap.setdefault(tap, []).append(dm[p, :, q, :])
  zero = jnp.zeros((c, o), dtype)
  dk = jnp.stack([sum(by_tap[t][1:], by_tap[t][0]) if t in by_tap else zero
                  for t in np.ndindex(kh, kw)]).reshape(kernel.shape)
  return dx.astype(x.dtype), dk.astype(kernel.dtype)


_conv_unrolled.defvjp(_conv_unrolled_fwd, _conv_unrolled_bwd)


def unrolled_blocks(input_hw, kernel_hw, strides, pads) -> int:
  """How many kernel-sized blocks "unrolled"'s matrix has (input x output positions; at most
  `UNROLLED_MAX_BLOCKS` are allowed), for an input already padded by `pads`."""
  return int(np.prod(input_hw)) * int(np.prod(output_hw(input_hw, kernel_hw, strides, pads)))


def _check_unrolled(input_hw, kernel_hw, strides, pads):
  """Refuses maps too large for "unrolled" (its matrix grows as input x output positions)."""
  out = output_hw(input_hw, kernel_hw, strides, pads)
  blocks = unrolled_blocks(input_hw, kernel_hw, strides, pads)
  if blocks > UNROLLED_MAX_BLOCKS:
    raise ValueError(f"formulation='unrolled' is for tiny maps: input {input_hw[0]}x{input_hw[1]} "
                     f"and output {out[0]}x{out[1]} would need {blocks} kernel-sized blocks (at "
                     f"most {UNROLLED_MAX_BLOCKS}); use formulation='auto'")


_FORMULATION_FNS = {"lax": _conv_lax, "im2col": _conv_im2col, "lax_im2col": _conv_lax_im2col}


def conv2d(x, kernel, *, strides=1, padding: Padding = "SAME", pad_value: float = 0.0,
           formulation: str = "auto", precision=None,
           preferred_element_type: Optional[jnp.dtype] = None) -> jax.Array:
  """2-D convolution, NHWC input and HWIO kernel, with explicit padding by `pad_value`.

  Args:
    x: float array (N, H, W, C).
    kernel: float array (kh, kw, C, O).
    strides: int or (sh, sw).
    padding: "SAME" / "VALID" (XLA's rules), an int (all sides) or ((top, bottom), (left, right)).
    pad_value: the constant the input is padded with (a Python number).
    formulation: "lax" (lax.conv_general_dilated), "im2col" (shifted views + one dot),
      "lax_im2col" (lax forward, im2col's gradient backward; reverse mode only, no jvp),
      "lax_padded" (lax forward and backward with the padding inside every conv; reverse mode
      only), "native" (the C++ extension's float32 conv: CPU with AVX-512F, stride 1; reverse
      mode only), "winograd" (the extension's Winograd F(4x4, 3x3) conv; reverse mode only),
      "unrolled" (one matmul with a matrix of kernel taps, for maps of a few positions; reverse
      mode only) or "auto" (`choose_formulation`). All give the same result up to float
      summation order.
    precision, preferred_element_type: passed to the conv / dot (e.g. bfloat16 operands with
      float32 accumulation).

  Returns:
    (N, Ho, Wo, O) in the promoted dtype of x and kernel (or preferred_element_type).
  """
  x, kernel = jnp.asarray(x), jnp.asarray(kernel)
  if x.ndim != 4:
    raise ValueError(f"x must be a rank-4 NHWC array, got shape {x.shape}")
  if kernel.ndim != 4:
    raise ValueError(f"kernel must be a rank-4 HWIO array, got shape {kernel.shape}")
  for name, a in (("x", x), ("kernel", kernel)):
    if not jnp.issubdtype(a.dtype, jnp.floating):
      raise TypeError(f"{name} must be a floating-point array, got dtype {a.dtype}")
  if x.shape[3] != kernel.shape[2]:
    raise ValueError(f"x has {x.shape[3]} channels but kernel expects {kernel.shape[2]} "
                     f"(kernel shape {kernel.shape}, HWIO)")
  if formulation not in FORMULATIONS:
    raise ValueError(f"formulation must be one of {FORMULATIONS}, got {formulation!r}")
  if isinstance(pad_value, bool) or not isinstance(pad_value, (int, float, np.integer, np.floating)):
    raise TypeError(f"pad_value must be a Python number, got {type(pad_value).__name__}")
  strides = normalize_pair(strides, "strides")
  kernel_hw = kernel.shape[:2]
  pads = normalize_padding(padding, x.shape[1:3], kernel_hw, strides)
  padded_hw = tuple(n + lo + hi for n, (lo, hi) in zip(x.shape[1:3], pads))
  if padded_hw[0] < kernel_hw[0] or padded_hw[1] < kernel_hw[1]:
    raise ValueError(f"kernel of size {tuple(kernel_hw)} is larger than the padded input "
                     f"{padded_hw} (input {tuple(x.shape[1:3])}, padding {pads}); "
                     "check kernel_size and padding")
  dtype = jnp.result_type(x, kernel)
  x, kernel = x.astype(dtype), kernel.astype(dtype)
  if formulation == "auto":
    native_ok = preferred_element_type is None or jnp.dtype(preferred_element_type) == jnp.float32
    formulation = choose_formulation(x.shape, kernel.shape, strides, pads, pad_value, dtype=dtype,
                                     native=None if native_ok else False)
  if formulation == "native":
    return _conv_native(x, kernel, strides, pads, pad_value, preferred_element_type)
  if formulation == "winograd":
    return _conv_winograd(x, kernel, strides, pads, pad_value, preferred_element_type)
  if formulation == "lax_padded" and pad_value == 0:
    return _conv_lax_padded(x, kernel, strides, pads, precision, preferred_element_type)
  if formulation == "unrolled":
    x, pads = _explicitly_padded(x, pads, pad_value, fits=True)
    _check_unrolled(x.shape[1:3], kernel_hw, strides, pads)
    return _conv_unrolled(x, kernel, strides, pads, precision, preferred_element_type)
  if any(lo or hi for lo, hi in pads):
    x = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=jnp.asarray(pad_value, dtype))
  if formulation == "lax_padded":  # non-zero padding values: padded above, the conv itself VALID
    return _conv_lax_padded(x, kernel, strides, ((0, 0), (0, 0)), precision,
                            preferred_element_type)
  return _FORMULATION_FNS[formulation](x, kernel, strides, precision, preferred_element_type)
