"""Float 2-D convolution (NHWC / HWIO) in several formulations, chosen per shape in one place.

XLA's CPU convolution (`lax.conv_general_dilated`) is slow, and pathological on maps no larger than
the kernel (/work/shared/PERF-NOTES.md: ~100 ms for one 2x2 512->512 layer at batch 16); im2col
(the kh*kw shifted views of the padded input concatenated along channels, then one `jnp.dot` with
the kernel reshaped to (kh*kw*C, O)) has no such pathology. Formulations:
  "lax"         lax.conv_general_dilated, forward and (autodiff) backward.
  "im2col"      shifted views + one dot, forward and (autodiff) backward.
  "lax_im2col"  lax.conv forward, im2col's gradient backward (a custom_vjp: reverse mode only).
All compute the same sum and differ only in summation order (results agree within float rounding;
tests/test_conv.py). `choose_formulation` is the single policy that `formulation="auto"` applies;
experiments/bench_conv_formulations.py measures it.

Padding is explicit: the input is padded with `pad_value` (0, or +-1 for binarized inputs whose
packed form has no 0), then convolved VALID, so every formulation sees the same padded input.
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

FORMULATIONS = ("auto", "lax", "im2col", "lax_im2col")
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


def choose_formulation(input_shape: Sequence[int], kernel_shape: Sequence[int],
                       strides: Sequence[int], pads: Pads) -> str:
  """The formulation "auto" uses for one conv shape (the one place to tune the policy).

    * "im2col" for 1x1 kernels (a reshape and one matmul), for output maps of at most 4x4 (where
      lax.conv is pathological: ~100x slower at 2x2) and for inputs of at most 8 channels (RGB
      first layers, where the patch matrix is small).
    * "lax_im2col" otherwise: lax.conv's forward (2-4x faster than the im2col dot on large maps,
      which matters for evaluation) with im2col's backward (lax.conv's backward is 1.2-1.8x slower).

  Measured with experiments/bench_conv_formulations.py's `bench_shape` (batch 128, float32, 3x3
  SAME, median of 3, ms; "f+b" = value_and_grad for input and kernel) on the 2-core AMD EPYC Zen 5,
  load average about 1 (other jobs sharing the cores):
     cin->cout   map  |  fwd lax  fwd i2c  fwd mix |  f+b lax  f+b i2c  f+b mix | auto
       3->64    32x32 |    17.3     10.8     16.7  |    23.4     15.9     17.6  | im2col
      64->64    32x32 |    76.8    188.7     80.2  |   427.6    294.8    325.3  | lax_im2col
      64->128   16x16 |    21.7     63.6     22.0  |   107.6     91.6     93.8  | lax_im2col
     128->128   16x16 |    24.4     99.4     23.9  |   210.3    192.9    188.5  | lax_im2col
     128->256    8x8  |    12.3     38.4     12.7  |   104.2     72.1     66.6  | lax_im2col
     256->256    8x8  |    25.8     74.0     25.1  |   204.4    134.3    129.8  | lax_im2col
     256->512    4x4  |    15.5     15.0     12.5  |    77.1     41.3     49.2  | im2col
     512->512    4x4  |    29.0     40.8     28.3  |   212.2     93.2    108.0  | im2col
     512->512    2x2  |   755.9      6.0    758.5  |  2252.1     21.6    788.1  | im2col
  Sums over the nine shapes: f+b lax 3635, im2col 958, auto 976 ms; forward lax 979, im2col 537,
  auto 237 ms. So "auto" trains as fast as im2col (within noise) and evaluates 2.3x faster. At
  batch 16, lax alone won f+b on 64->64 32x32 and 128->128 16x16 (ratio 0.7-0.8) in one of two
  runs; the policy ignores batch size. Under heavy load (6 jobs on 2 cores) all numbers are
  2-3x higher and noisier; compare ratios within one run.
  """
  kh, kw, cin = kernel_shape[:3]
  ho, wo = output_hw(input_shape[1:3], (kh, kw), strides, pads)
  if kh * kw == 1 or ho * wo <= 16 or cin <= 8:
    return "im2col"
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

_IMPLEMENTATIONS = {"lax": _conv_lax, "im2col": _conv_im2col, "lax_im2col": _conv_lax_im2col}


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
      "lax_im2col" (lax forward, im2col's gradient backward; reverse mode only, no jvp) or "auto"
      (`choose_formulation`). All give the same result up to float summation order.
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
    formulation = choose_formulation(x.shape, kernel.shape, strides, pads)
  if any(lo or hi for lo, hi in pads):
    x = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=jnp.asarray(pad_value, dtype))
  return _IMPLEMENTATIONS[formulation](x, kernel, strides, precision, preferred_element_type)
