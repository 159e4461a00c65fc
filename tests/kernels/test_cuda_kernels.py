"""The CUDA XNOR-popcount kernels (ffi/cuda): their logic on the CPU, the kernels on a GPU.

CPU (everywhere): xnorjax._cuda_host runs the tensor-core path's tiling, gather, shared-memory
swizzle, ldmatrix addressing, mma fragment layout and epilogue (the functions of
ffi/cuda/xnor_plan.h the kernels call) and the simple path, against an independent numpy
reference; it also checks bounds, single writes, unread poison and bank conflicts. The handlers'
shape validation is checked on the same host code.
GPU (skipped without one): the registered targets against XLA's reference on both paths.
"""

import functools
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import xnorjax
from xnorjax.ops import pack_bits
from xnorjax.ops import xnor as xnor_lib

try:
  from xnorjax import _cuda_host  # pylint: disable=g-import-not-at-top
except ImportError:  # extension not built
  _cuda_host = None

requires_host = pytest.mark.skipif(_cuda_host is None,
                                   reason="xnorjax._cuda_host not built (run `make install`)")
has_gpu = jax.default_backend() == "gpu"
requires_gpu = pytest.mark.skipif(not has_gpu, reason="needs a CUDA GPU")

KINDS = ("i32", "f32", "packed")
# The CUDA paths as the host emulation runs them: the simple kernel; the tensor-core kernel with its
# 2 x 2 warp tiling on mma.sync; with the warpgroup tiling on sm_90a (wgmma); and the warpgroup
# tiling on the mma.sync code that other architectures compile it to.
PATHS = ("simple", "mma", "wgmma", "warpgroup_mma_sync")


# ----------------------------------------------------------------------------------------------
# Independent numpy reference.


def _unpack(words: np.ndarray, bits: int) -> np.ndarray:
  """+-1 int64 values of the first `bits` bits along the last axis."""
  shifts = np.arange(32, dtype=np.uint32)
  b = (words[..., :, None] >> shifts) & 1
  b = b.reshape(words.shape[:-1] + (-1,))[..., :bits]
  return np.where(b == 1, 1, -1).astype(np.int64)


def _pack(bits: np.ndarray) -> np.ndarray:
  """Packs a bool array along its last axis (bit j of word j // 32), zero tail."""
  n = bits.shape[-1]
  words = -(-n // 32)
  padded = np.zeros(bits.shape[:-1] + (words * 32,), np.uint64)
  padded[..., :n] = bits
  padded = padded.reshape(bits.shape[:-1] + (words, 32))
  return (padded << np.arange(32, dtype=np.uint64)).sum(-1).astype(np.uint32)


def _reference_conv_dot(x, w, channels, strides, pads, pad_value):
  """Exact dot products, x u32[N, H, W, Cw], w u32[O, KH, KW, Cw] -> int64[N, OH, OW, O]."""
  xs = _unpack(x, channels)
  ws = _unpack(w, channels)
  (pt, pb), (pl, pr) = pads
  xs = np.pad(xs, ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=pad_value)
  n, hp, wp, _ = xs.shape
  o, kh, kw, _ = ws.shape
  sh, sw = strides
  oh, ow = (hp - kh) // sh + 1, (wp - kw) // sw + 1
  out = np.zeros((n, oh, ow, o), np.int64)
  for i in range(kh):
    for j in range(kw):
      patch = xs[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw, :]
      out += patch @ ws[:, i, j, :].T
  return out


def _epilogue(dot, scale, bias, kind):
  if kind == "i32":
    return dot.astype(np.int32)
  # One fused multiply-add rounded to float32, as the kernels (CPU and CUDA) compute it: the float64
  # product is exact (|dot| < 2**29, 24-bit scale) and the float64 sum rounds at most once before
  # the float32 rounding (a double rounding that differs from fma's single one is ~2**-29 rare).
  y = (dot.astype(np.float64) * scale.astype(np.float64) + bias.astype(np.float64)).astype(
      np.float32)
  return y if kind == "f32" else _pack(y >= 0)


def _random_words(rng, shape, bits):
  """Random packed words along the last axis with zero tail bits (a valid pack_bits result)."""
  return _pack(rng.random(shape + (bits,)) < 0.5)


def _dyadic(rng, size):
  """Random float32 values with few significant bits: products and sums are exact, so the
  epilogue agrees with or without fused multiply-add."""
  return (rng.integers(-64, 65, size) / 16).astype(np.float32)


def _problem(rng, n, h, w, c, o, k, strides=(1, 1), pads=None, pad_value=0):
  kh, kw = (k, k) if isinstance(k, int) else k
  if pads is None:
    pads = ((kh // 2, (kh - 1) // 2), (kw // 2, (kw - 1) // 2))
  x = _random_words(rng, (n, h, w), c)
  wt = _random_words(rng, (o, kh, kw), c)
  scale, bias = _dyadic(rng, o), _dyadic(rng, o)
  attrs = dict(channels=c, stride_h=strides[0], stride_w=strides[1], pad_top=pads[0][0],
               pad_bottom=pads[0][1], pad_left=pads[1][0], pad_right=pads[1][1],
               pad_value=pad_value)
  return x, wt, scale, bias, attrs, (strides, pads)


# ----------------------------------------------------------------------------------------------
# CPU: the kernels' index arithmetic, emulated.

# (n, h, w, c, o, k, strides, pads, pad_value): odd channel counts (tails, Cw = 1..5 for every
# gather width), partial row and column tiles, several K slabs, strides, asymmetric and wide
# padding, maps smaller than the kernel.
ODD_SHAPES = [
    (2, 9, 7, 64, 64, 3, (1, 1), None, 0),
    (1, 10, 11, 33, 70, 3, (2, 1), ((1, 2), (0, 1)), -1),
    (3, 5, 6, 100, 9, (3, 2), (1, 2), ((2, 0), (1, 1)), 1),
    (1, 2, 2, 512, 40, 3, (1, 1), None, 0),       # 2x2 maps, 5 slabs of K
    (2, 1, 1, 31, 33, 3, (1, 1), None, 1),        # every tap but the centre is padding
    (1, 7, 7, 96, 130, 1, (1, 1), ((0, 0), (0, 0)), 0),  # 1x1 kernel, 3 column tiles
    (1, 6, 5, 160, 17, 5, (2, 2), ((3, 3), (4, 1)), 0),  # padding wider than the kernel reach
    (5, 3, 4, 1, 5, 2, (1, 1), ((1, 0), (0, 1)), -1),    # C = 1
]


@requires_host
@pytest.mark.parametrize("shape", ODD_SHAPES, ids=lambda s: "x".join(map(str, s[:6])))
def test_emulated_paths_match_numpy(shape, rng):
  n, h, w, c, o, k, strides, pads, pad_value = shape
  x, wt, scale, bias, attrs, (strides, pads) = _problem(rng, n, h, w, c, o, k, strides, pads,
                                                        pad_value)
  dot = _reference_conv_dot(x, wt, c, strides, pads, pad_value)
  for kind in KINDS:
    want = _epilogue(dot, scale, bias, kind)
    for path in PATHS:
      got, conflicts = _cuda_host.conv(x, wt, scale, bias, **attrs, kind=kind, path=path)
      np.testing.assert_array_equal(got, want, err_msg=f"{kind} {path}")
      assert conflicts == 0


def _with_tail_garbage(rng, words, bits):
  """A copy of packed `words` with random bits past `bits` in the last word of the last axis."""
  garbage = np.uint32((0xFFFFFFFF << (bits % 32)) & 0xFFFFFFFF) if bits % 32 else np.uint32(0)
  out = words.copy()
  out[..., -1] |= rng.integers(0, 2**32, out[..., -1].shape, dtype=np.uint64).astype(
      np.uint32) & garbage
  return out


@requires_host
def test_emulated_paths_ignore_tail_bits(rng):
  # Like the CPU kernels, the CUDA paths ignore bits past C (the contract wants them 0).
  shape = (2, 6, 5, 100, 70, 3, (1, 2), ((1, 1), (2, 0)), 1)
  n, h, w, c, o, k, strides, pads, pad_value = shape
  x, wt, scale, bias, attrs, (strides, pads) = _problem(rng, n, h, w, c, o, k, strides, pads,
                                                        pad_value)
  dot = _reference_conv_dot(x, wt, c, strides, pads, pad_value)
  xg, wg = _with_tail_garbage(rng, x, c), _with_tail_garbage(rng, wt, c)
  assert (xg != x).any() and (wg != wt).any()
  for path in PATHS:
    for kind in KINDS:
      got, _ = _cuda_host.conv(xg, wg, scale, bias, **attrs, kind=kind, path=path)
      np.testing.assert_array_equal(got, _epilogue(dot, scale, bias, kind), err_msg=path)
  for path in PATHS:  # dense: features 300 = 9 words + 12 bits
    xd, wd = _random_words(rng, (9,), 300), _random_words(rng, (40,), 300)
    want = _unpack(xd, 300) @ _unpack(wd, 300).T
    got, _ = _cuda_host.dense(_with_tail_garbage(rng, xd, 300), _with_tail_garbage(rng, wd, 300),
                              None, None, features=300, kind="i32", path=path)
    np.testing.assert_array_equal(got, want, err_msg=path)


@requires_host
@pytest.mark.parametrize("shape", ODD_SHAPES[:4], ids=lambda s: "x".join(map(str, s[:6])))
def test_emulated_paths_with_input_major_weights(shape, rng):
  # The "_hwio" / "_kn" targets read the weights in the public packed layout, no transpose.
  n, h, w, c, o, k, strides, pads, pad_value = shape
  x, wt, scale, bias, attrs, (strides, pads) = _problem(rng, n, h, w, c, o, k, strides, pads,
                                                        pad_value)
  w_hwio = np.ascontiguousarray(np.transpose(_with_tail_garbage(rng, wt, c), (1, 2, 3, 0)))
  dot = _reference_conv_dot(x, wt, c, strides, pads, pad_value)
  for path in PATHS:
    for kind in KINDS:
      got, conflicts = _cuda_host.conv(x, w_hwio, scale, bias, **attrs, kind=kind, path=path,
                                       weights_input_major=True)
      np.testing.assert_array_equal(got, _epilogue(dot, scale, bias, kind), err_msg=path)
      assert conflicts == 0
  xd, wd = _random_words(rng, (5,), 300), _random_words(rng, (70,), 300)
  want = _unpack(xd, 300) @ _unpack(wd, 300).T
  for path in PATHS:
    got, _ = _cuda_host.dense(xd, np.ascontiguousarray(wd.T), None, None, features=300, kind="i32",
                              path=path, weights_input_major=True)
    np.testing.assert_array_equal(got, want, err_msg=path)


@requires_host
@pytest.mark.parametrize("chunk_words", [1, 2, 4])
def test_emulated_gather_widths(chunk_words, rng):
  # The launch narrows the gather width V when an operand address is less aligned than 16 bytes.
  x, wt, scale, bias, attrs, (strides, pads) = _problem(rng, 2, 5, 7, 256, 70, 3, (2, 1),
                                                        ((2, 1), (1, 1)), 1)
  dot = _reference_conv_dot(x, wt, 256, strides, pads, 1)
  for path in ("mma", "wgmma"):
    got, _ = _cuda_host.conv(x, wt, scale, bias, **attrs, kind="packed", path=path,
                             chunk_words=chunk_words)
    np.testing.assert_array_equal(got, _epilogue(dot, scale, bias, "packed"))


@requires_host
def test_emulated_epilogue_with_arbitrary_floats(rng):
  # Arbitrary float scale/bias: the kernels' epilogue is one fused multiply-add per output.
  x, wt, _, _, attrs, (strides, pads) = _problem(rng, 2, 6, 6, 70, 45, 3, pad_value=0)
  scale = rng.standard_normal(45).astype(np.float32)
  bias = rng.standard_normal(45).astype(np.float32) * 10
  dot = _reference_conv_dot(x, wt, 70, strides, pads, 0)
  for kind in ("f32", "packed"):
    for path in ("mma", "wgmma"):
      got, _ = _cuda_host.conv(x, wt, scale, bias, **attrs, kind=kind, path=path)
      np.testing.assert_array_equal(got, _epilogue(dot, scale, bias, kind))


BIN_VGG16_LAYERS = [  # (C_in, C_out, H = W) of bin_vgg16's binary 3x3 SAME stride-1 layers
    (64, 64, 32), (64, 128, 16), (128, 128, 16), (128, 256, 8), (256, 256, 8), (256, 512, 4),
    (512, 512, 4), (512, 512, 2)]


@requires_host
@pytest.mark.parametrize("layer", BIN_VGG16_LAYERS, ids=lambda l: f"{l[0]}to{l[1]}at{l[2]}")
def test_emulated_bin_vgg16_layers(layer, rng):
  c, o, hw = layer
  x, wt, scale, bias, attrs, (strides, pads) = _problem(rng, 1, hw, hw, c, o, 3)
  dot = _reference_conv_dot(x, wt, c, strides, pads, 0)
  for path in ("mma", "wgmma"):
    kind = KINDS[int(rng.integers(3))]
    got, conflicts = _cuda_host.conv(x, wt, scale, bias, **attrs, kind=kind, path=path)
    np.testing.assert_array_equal(got, _epilogue(dot, scale, bias, kind), err_msg=f"{kind} {path}")
    assert conflicts == 0


@requires_host
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (3, 300, 70), (65, 2048, 40), (130, 97, 129)])
def test_emulated_dense_matches_numpy(m, k, n, rng):
  x = _random_words(rng, (m,), k)
  w = _random_words(rng, (n,), k)
  scale, bias = _dyadic(rng, n), _dyadic(rng, n)
  dot = _unpack(x, k) @ _unpack(w, k).T
  for kind in KINDS:
    for path in PATHS:
      got, _ = _cuda_host.dense(x, w, scale, bias, features=k, kind=kind, path=path)
      np.testing.assert_array_equal(got, _epilogue(dot, scale, bias, kind), err_msg=kind)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no CUDA compiler on this machine")
def test_cuda_module_registers_the_cpu_target_names():
  # Same target names on both platforms, so one ffi_call reaches either kernel.
  from xnorjax import _ffi_cuda  # pylint: disable=g-import-not-at-top
  cuda = {n for n in _ffi_cuda.registrations() if n.startswith("xnorjax_xnor_")}
  cpu = {n for n in xnorjax.require_extension().registrations() if n.startswith("xnorjax_xnor_")}
  expected = {f"xnorjax_xnor_{op}_{kind}{suffix}" for kind in KINDS
              for op, suffix in (("conv", ""), ("conv", "_hwio"), ("dense", ""), ("dense", "_kn"))}
  assert expected <= cuda <= cpu


def _scratch_bytes_reference(n, h, w, cw, kh, kw, o):
  """The tensor-core path's tables: i32 pixel popcounts and prefix tables (padded to 8 bytes),
  then an 8-byte K-table entry per word of K (the narrowest gather, one word per entry)."""
  ints = n * h * w + o * (kh + 1) * (kw + 1)
  return 4 * (ints + ints % 2) + 8 * kh * kw * cw


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no CUDA compiler on this machine")
@pytest.mark.parametrize("op", ["conv", "dense"])
def test_cuda_lowering_gives_the_kernel_its_scratch_result(op):
  # XLA allocates the tensor-core path's scratch as the custom call's second result (its FFI
  # scratch allocator gave nothing on an H200): lowered for CUDA here, without a GPU.
  from xnorjax import _ffi_cuda  # pylint: disable=g-import-not-at-top
  if op == "conv":
    fn = functools.partial(xnor_lib.xnor_conv, strides=2, padding="SAME", implementation="kernel")
    args, dims = ((3, 9, 7, 70), (3, 3, 70, 40)), (3, 9, 7, 3, 3, 3, 40)
  else:
    fn = functools.partial(xnor_lib.xnor_dense, implementation="kernel")
    args, dims = ((5, 300), (300, 70)), (5, 1, 1, 10, 1, 1, 70)
  bytes_ = _scratch_bytes_reference(*dims)
  assert _ffi_cuda.scratch_bytes(*dims) == bytes_ == _cuda_host.scratch_bytes(*dims)
  lowered = jax.jit(fn).trace(*[jnp.ones(s) for s in args]).lower(
      lowering_platforms=("cuda",)).as_text()
  calls = [line for line in lowered.splitlines() if f"@xnorjax_xnor_{op}_i32" in line]
  assert len(calls) == 1, lowered
  assert calls[0].rstrip().endswith(f"tensor<{bytes_}xui8>)"), calls[0]


@requires_host
def test_slab_chunks_cover_each_word_once():
  for chunk_words in (1, 2, 4):
    for rows in (_cuda_host.BLOCK_ROWS, _cuda_host.BLOCK_COLS):
      seen = set()
      for chunk in range(_cuda_host.slab_chunks(rows, chunk_words)):
        step, row, word = _cuda_host.slab_chunk_at(chunk, rows, chunk_words)
        assert word % chunk_words == 0
        for v in range(chunk_words):
          seen.add((step, row, word + v))
      assert len(seen) == _cuda_host.SLAB_WORDS * rows


@requires_host
def test_swizzle_is_a_permutation_within_each_row():
  for row in range(_cuda_host.BLOCK_ROWS):
    words = sorted(_cuda_host.swizzled_word(row, j) for j in range(8))
    assert words == list(range(8 * row, 8 * row + 8))


@requires_host
def test_accumulator_layout_covers_the_tile():
  cells = {(_cuda_host.acc_row(lane, r), _cuda_host.acc_col(lane, r))
           for lane in range(32) for r in range(4)}
  assert cells == {(i, j) for i in range(16) for j in range(8)}


@requires_host
def test_wgmma_descriptor_fields():
  # K-major, 32-byte swizzle: start >> 4 in bits 0-13, leading offset 1 (unused), stride 256 bytes
  # (>> 4) in bits 32-45, base offset 0, swizzle mode 3 in bits 62-63.
  d = _cuda_host.wgmma_descriptor(0x1A300)
  assert d & 0x3FFF == 0x1A300 >> 4
  assert (d >> 16) & 0x3FFF == 1
  assert (d >> 32) & 0x3FFF == 256 >> 4
  assert (d >> 49) & 7 == 0
  assert d >> 62 == 3


@requires_host
def test_path_choice():
  assert _cuda_host.choose_path(0, 9) == "mma"
  assert _cuda_host.choose_path(_cuda_host.IMPL_WGMMA, 9) == "warpgroup"
  assert _cuda_host.choose_path(3, 8) == "mma"
  assert _cuda_host.choose_path(0, 7) == "simple"
  assert _cuda_host.choose_path(_cuda_host.IMPL_SIMPLE, 9) == "simple"
  assert _cuda_host.choose_path(_cuda_host.IMPL_MMA, 9) == "mma"
  with pytest.raises(ValueError, match="compute capability"):
    _cuda_host.choose_path(_cuda_host.IMPL_MMA, 7)


_GOOD = dict(kind="f32", channels=40, stride_h=1, stride_w=2, pad_top=1, pad_bottom=1, pad_left=0,
             pad_right=2, pad_value=0, impl=0)


def _validate(**changes):
  args = dict(x=[2, 5, 6, 2], w=[7, 3, 3, 2], scale=[7], bias=[7], out=[2, 5, 3, 7])
  args.update({k: v for k, v in changes.items() if k in args})
  attrs = dict(_GOOD, **{k: v for k, v in changes.items() if k not in args})
  return _cuda_host.validate_conv(args.pop("x"), args.pop("w"), args.pop("scale"),
                                  args.pop("bias"), args.pop("out"), **attrs)


@requires_host
@pytest.mark.parametrize("changes,message", [
    ({}, ""),
    (dict(x=[2, 5, 6]), "x must be"),
    (dict(w=[7, 3, 3, 3]), "same Cw"),
    (dict(channels=70), "channels=70"),
    (dict(channels=0), "channels=0"),
    (dict(stride_w=0), "strides"),
    (dict(pad_left=-1), "paddings"),
    (dict(pad_value=2), "pad_value"),
    (dict(impl=7), "impl"),
    (dict(out=[2, 5, 4, 7]), "result dims"),
    (dict(scale=[6]), "scale and bias"),
    (dict(scale=None), "scale and bias are required"),
    (dict(w=[7, 300, 3, 2], out=[2, 0, 3, 7]), "kernel size"),
])
def test_handler_validation(changes, message):
  got = _validate(**changes)
  if message:
    assert message in got
  else:
    assert got == ""


@requires_host
def test_handler_validation_input_major_weights():
  hwio = dict(x=[2, 5, 6, 2], w=[3, 3, 2, 7], scale=[7], bias=[7], out=[2, 5, 3, 7])
  assert _cuda_host.validate_conv(*hwio.values(), **_GOOD, weights_input_major=True) == ""
  assert "same Cw" in _cuda_host.validate_conv(*hwio.values(), **_GOOD)  # read as [O, KH, KW, Cw]
  assert _cuda_host.validate_dense([4, 3], [3, 70], None, None, [4, 70], kind="i32", features=90,
                                   impl=0, weights_input_major=True) == ""


@requires_host
def test_handler_validation_dense_and_packed():
  assert _cuda_host.validate_dense([4, 3], [70, 3], [70], [70], [4, 3], kind="packed",
                                   features=90, impl=0) == ""
  assert "features=97" in _cuda_host.validate_dense([4, 3], [70, 3], None, None, [4, 70],
                                                    kind="i32", features=97, impl=0)
  assert "result dims" in _cuda_host.validate_dense([4, 3], [70, 3], None, None, [4, 3],
                                                    kind="i32", features=90, impl=0)
  assert "result dims" in _validate(kind="packed")  # packed needs ceil(O / 32) words
  assert _validate(kind="packed", out=[2, 5, 3, 1]) == ""


@requires_host
def test_emulation_rejects_bad_arguments(rng):
  x = _random_words(rng, (1, 4, 4), 40)
  w = _random_words(rng, (3, 3, 3), 41)
  with pytest.raises(ValueError, match="channels"):
    _cuda_host.conv(x, w, None, None, channels=80, stride_h=1, stride_w=1, pad_top=1,
                    pad_bottom=1, pad_left=1, pad_right=1, pad_value=0, kind="i32", path="mma")


# ----------------------------------------------------------------------------------------------
# GPU: the registered CUDA targets.


def _ffi_conv(x, w, scale, bias, attrs, kind, impl, hwio=False):
  """Calls a CUDA conv target directly (impl 100 simple, 101 mma.sync, 102 warpgroup, 0 auto);
  hwio: the "_hwio" target, with w in the public packed layout [KH, KW, Cw, O]."""
  n, h, wd, _ = x.shape
  kh, kw, _, o = w.shape if hwio else (w.shape[1], w.shape[2], None, w.shape[0])
  oh = (h + attrs["pad_top"] + attrs["pad_bottom"] - kh) // attrs["stride_h"] + 1
  ow = (wd + attrs["pad_left"] + attrs["pad_right"] - kw) // attrs["stride_w"] + 1
  last = -(-o // 32) if kind == "packed" else o
  dtype = {"i32": jnp.int32, "f32": jnp.float32, "packed": jnp.uint32}[kind]
  call = xnor_lib.ffi_kernel_call(f"xnorjax_xnor_conv_{kind}" + ("_hwio" if hwio else ""),
                                  jax.ShapeDtypeStruct((n, oh, ow, last), dtype),
                                  scratch=(n, h, wd, x.shape[3], kh, kw, o))
  operands = (x, w) if kind == "i32" else (x, w, scale, bias)
  return call(*operands, **{k: np.int64(v) for k, v in attrs.items()}, impl=np.int64(impl))


@requires_gpu
@pytest.mark.parametrize("shape", ODD_SHAPES, ids=lambda s: "x".join(map(str, s[:6])))
def test_gpu_conv_targets_match_numpy(shape, rng):
  xnorjax.require_extension()
  n, h, w, c, o, k, strides, pads, pad_value = shape
  x, wt, scale, bias, attrs, (strides, pads) = _problem(rng, n, h, w, c, o, k, strides, pads,
                                                        pad_value)
  dot = _reference_conv_dot(x, wt, c, strides, pads, pad_value)
  gpu = jax.devices("gpu")[0]
  args = [jax.device_put(a, gpu) for a in (x, wt, scale, bias)]
  for kind in KINDS:
    for impl in (_cuda_host.IMPL_SIMPLE, _cuda_host.IMPL_MMA, _cuda_host.IMPL_WGMMA, 0):
      got = jax.jit(lambda *a: _ffi_conv(*a, attrs, kind, impl))(*args)
      np.testing.assert_array_equal(np.asarray(got), _epilogue(dot, scale, bias, kind),
                                    err_msg=f"{kind} impl={impl}")


@requires_gpu
@pytest.mark.parametrize("shape", ODD_SHAPES[:4], ids=lambda s: "x".join(map(str, s[:6])))
def test_gpu_hwio_targets_match_numpy(shape, rng):
  xnorjax.require_extension()
  n, h, w, c, o, k, strides, pads, pad_value = shape
  x, wt, scale, bias, attrs, (strides, pads) = _problem(rng, n, h, w, c, o, k, strides, pads,
                                                        pad_value)
  w_hwio = np.ascontiguousarray(np.transpose(_with_tail_garbage(rng, wt, c), (1, 2, 3, 0)))
  dot = _reference_conv_dot(x, wt, c, strides, pads, pad_value)
  gpu = jax.devices("gpu")[0]
  args = [jax.device_put(a, gpu) for a in (x, w_hwio, scale, bias)]
  for kind in KINDS:
    for impl in (_cuda_host.IMPL_SIMPLE, _cuda_host.IMPL_MMA, _cuda_host.IMPL_WGMMA, 0):
      got = jax.jit(lambda *a: _ffi_conv(*a, attrs, kind, impl, hwio=True))(*args)
      np.testing.assert_array_equal(np.asarray(got), _epilogue(dot, scale, bias, kind),
                                    err_msg=f"{kind} impl={impl}")


@requires_gpu
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (3, 300, 70), (200, 2048, 130)])
def test_gpu_dense_targets_match_numpy(m, k, n, rng):
  xnorjax.require_extension()
  x = _random_words(rng, (m,), k)
  w = _random_words(rng, (n,), k)
  scale, bias = _dyadic(rng, n), _dyadic(rng, n)
  dot = _unpack(x, k) @ _unpack(w, k).T
  for kind in KINDS:
    for impl in (_cuda_host.IMPL_SIMPLE, _cuda_host.IMPL_MMA, _cuda_host.IMPL_WGMMA, 0):
      last = -(-n // 32) if kind == "packed" else n
      dtype = {"i32": jnp.int32, "f32": jnp.float32, "packed": jnp.uint32}[kind]
      call = xnor_lib.ffi_kernel_call(f"xnorjax_xnor_dense_{kind}",
                                      jax.ShapeDtypeStruct((m, last), dtype),
                                      scratch=(m, 1, 1, x.shape[1], 1, 1, n))
      operands = (x, w) if kind == "i32" else (x, w, scale, bias)
      got = jax.jit(lambda *a: call(*a, features=np.int64(k), impl=np.int64(impl)))(
          *[jax.device_put(a, jax.devices("gpu")[0]) for a in operands])
      np.testing.assert_array_equal(np.asarray(got), _epilogue(dot, scale, bias, kind),
                                    err_msg=f"{kind} impl={impl}")


@requires_gpu
@pytest.mark.parametrize("pack_output", [False, True])
def test_gpu_public_ops_match_xla_reference(pack_output, rng):
  # The public ops dispatch to the CUDA targets on a GPU; the pure-JAX reference is XLA's conv.
  x = rng.standard_normal((3, 12, 12, 96)).astype(np.float32)
  kernel = rng.standard_normal((3, 3, 96, 80)).astype(np.float32)
  scale, bias = _dyadic(rng, 80), _dyadic(rng, 80)
  for pad_value in (0.0, -1.0, 1.0):
    kwargs = dict(padding="SAME", pad_value=pad_value, scale=scale, bias=bias,
                  pack_output=pack_output)
    lowered = jax.jit(functools.partial(xnor_lib.xnor_conv, **kwargs)).lower(x, kernel).as_text()
    assert "xnorjax_xnor_conv" in lowered
    got = xnor_lib.xnor_conv(x, kernel, **kwargs)
    want = xnor_lib.xnor_conv(x, kernel, implementation="reference", **kwargs)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  y = rng.standard_normal((5, 300)).astype(np.float32)
  dense_kernel = rng.standard_normal((300, 70)).astype(np.float32)
  got = xnor_lib.xnor_dense(y, dense_kernel, pack_output=pack_output,
                            scale=scale[:1], bias=bias[:1])
  want = xnor_lib.xnor_dense(y, dense_kernel, pack_output=pack_output, scale=scale[:1],
                             bias=bias[:1], implementation="reference")
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def _run_conv_i32(x, w, out_shape, scratch, channels, impl):
  """The CUDA i32 conv target (3x3, stride 1, pad 1) with the given result shape and scratch."""
  call = xnor_lib.ffi_kernel_call("xnorjax_xnor_conv_i32",
                                  jax.ShapeDtypeStruct(out_shape, jnp.int32), scratch=scratch)
  attrs = dict(channels=channels, stride_h=1, stride_w=1, pad_top=1, pad_bottom=1, pad_left=1,
               pad_right=1, pad_value=0, impl=impl)
  fn = jax.jit(lambda a, b: call(a, b, **{k: np.int64(v) for k, v in attrs.items()}))
  return jax.block_until_ready(fn(x, w))


@requires_gpu
def test_gpu_handler_rejects_mismatched_shapes(rng):
  xnorjax.require_extension()
  x = jnp.asarray(_random_words(rng, (1, 4, 4), 40))
  w = jnp.asarray(_random_words(rng, (3, 3, 3), 40))
  with pytest.raises(Exception, match="result dims"):
    _run_conv_i32(x, w, (1, 4, 5, 3), (1, 4, 4, 2, 3, 3, 3), channels=40, impl=0)


@requires_gpu
def test_gpu_handler_rejects_a_short_scratch_result(rng):
  # The scratch result sized for a smaller call: an error naming it, never a write past its end.
  xnorjax.require_extension()
  x = jnp.asarray(_random_words(rng, (2, 8, 8), 64))
  w = jnp.asarray(_random_words(rng, (40, 3, 3), 64))
  with pytest.raises(Exception, match="scratch result has"):
    _run_conv_i32(x, w, (2, 8, 8, 40), (1, 8, 8, 2, 3, 3, 40), channels=64,
                  impl=_cuda_host.IMPL_MMA)
  # Sized for this call, the same operands run.
  got = _run_conv_i32(x, w, (2, 8, 8, 40), (2, 8, 8, 2, 3, 3, 40), channels=64,
                      impl=_cuda_host.IMPL_MMA)
  assert got.shape == (2, 8, 8, 40)


def test_pack_reference_matches_pack_bits(rng):
  # The numpy reference's packing is pack_bits' encoding.
  v = rng.standard_normal((3, 70)).astype(np.float32)
  np.testing.assert_array_equal(_pack(v >= 0), np.asarray(pack_bits(v, implementation="reference")))
