"""Times xnorjax.ops.conv2d's formulations on the VGG16 CIFAR-10 conv shapes.

Run: .venv/bin/python experiments/bench/conv_formulations.py [--batch=16] [--repeats=5] [--dtype=float32]

Prints, per shape, the median milliseconds of the jitted forward and of value_and_grad (forward +
gradients for input and kernel), the formulations measured back to back in one run (compare the
ratio; absolute numbers drift on shared machines), and which formulation `choose_formulation`
picks. The policy in xnorjax/ops/conv.py quotes this script's output.
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from experiments import cli
from experiments import huge_pages
from experiments.bench import timing
from xnorjax.ops import conv as conv_lib
from xnorjax.ops import float_conv

# (in_channels, out_channels, map size), 3x3 SAME: the first float conv and the 12 distinct binary
# conv shapes of VGG16 on 32x32 inputs (stage 3 and 4 repeat shapes).
FORMULATIONS = ("lax", "im2col", "lax_im2col", "lax_padded", "native", "winograd", "unrolled")
EXTENSION_FORMULATIONS = ("native", "winograd")  # float32 only, need the extension
VGG16_SHAPES = [(3, 64, 32), (64, 64, 32), (64, 128, 16), (128, 128, 16), (128, 256, 8),
                (256, 256, 8), (256, 512, 4), (512, 512, 4), (512, 512, 2)]


def _median_ms(fn, args, repeats):
  return 1e3 * float(np.median(timing.call_times(lambda: fn(*args), repeats)))


def bench_shape(cin, cout, size, batch, dtype, repeats, names, kernel_size=3):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((batch, size, size, cin)), dtype)
  k = jnp.asarray(rng.standard_normal((kernel_size, kernel_size, cin, cout)), dtype)
  ct = jnp.asarray(rng.standard_normal((batch, size, size, cout)), dtype)
  pads = conv_lib.normalize_padding("SAME", (size, size), (kernel_size, kernel_size), (1, 1))
  blocks = conv_lib.unrolled_blocks((size, size), (kernel_size, kernel_size), (1, 1), pads)
  row = {}
  for formulation in names:
    if formulation == "unrolled" and blocks > conv_lib.UNROLLED_MAX_BLOCKS:
      row[formulation] = (float("nan"), float("nan"))  # tiny maps only ("-" in the table)
      continue

    def forward(x, k, formulation=formulation):
      return conv_lib.conv2d(x, k, strides=1, padding="SAME", formulation=formulation)

    def loss(x, k, formulation=formulation):
      return jnp.sum(forward(x, k).astype(jnp.float32) * ct)

    row[formulation] = (_median_ms(jax.jit(forward), (x, k), repeats),
                        _median_ms(jax.jit(jax.value_and_grad(loss, argnums=(0, 1))), (x, k), repeats))
  row["auto"] = conv_lib.choose_formulation(x.shape, k.shape, (1, 1), pads, dtype=dtype)
  return row


def _cell(ms: float) -> str:
  return f"{'-':>8}" if np.isnan(ms) else f"{ms:8.2f}"


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  args = parser.parse_args()
  dtype = jnp.dtype(args.dtype)
  print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, batch {args.batch}, {args.dtype}, "
        f"3x3 SAME, median of {args.repeats}, ms")
  names = FORMULATIONS
  if dtype != jnp.float32 or not float_conv.available():
    names = tuple(n for n in names if n not in EXTENSION_FORMULATIONS)
  short = {"lax": "lax", "im2col": "i2c", "lax_im2col": "mix", "lax_padded": "pad", "native": "nat",
           "winograd": "win", "unrolled": "unr"}
  print(f"{'cin->cout':>10} {'map':>5} {'patches':>9} | "
        + " ".join(f"{'fwd ' + short[n]:>8}" for n in names) + " | "
        + " ".join(f"{'f+b ' + short[n]:>8}" for n in names) + " | auto")
  totals = dict.fromkeys(names + ("auto",), 0.0)
  for cin, cout, size in VGG16_SHAPES:
    row = bench_shape(cin, cout, size, args.batch, dtype, args.repeats, names)
    for name in names:
      totals[name] += row[name][1]
    totals["auto"] += row[row["auto"]][1]
    patch_mib = args.batch * size * size * 9 * cin * dtype.itemsize / 2**20
    print(f"{cin:>4}->{cout:<5} {size:>2}x{size:<2} {patch_mib:6.1f}MiB | "
          + " ".join(_cell(row[n][0]) for n in names) + " | "
          + " ".join(_cell(row[n][1]) for n in names) + f" | {row['auto']}", flush=True)
  print("sum of forward+backward over the shapes: "
        + ", ".join(f"{n} {totals[n]:.1f} ms" for n in names + ("auto",)
                    if not np.isnan(totals[n])) + " (formulations measured on every shape)")


if __name__ == "__main__":
  huge_pages.reexec_with_huge_pages()
  cli.run_main(main, absl_flags=False)
