"""Whole training steps under variants of the conv policy, interleaved in one process.

  python -m experiments.bench.conv_policy --variants=rgb:winograd,rgb:native
  python -m experiments.bench.conv_policy --models=vgg16 --variants=map2:native --rounds=12

Isolated convs do not always rank as they do inside a step: XLA fuses a layer's neighbours into
its operands (for instance BatchNorm's backward into the transposed output gradient that im2col's
kernel-gradient dot takes), so `choose_formulation`'s choices for small layers are checked here.
A variant `class:formulation` forces one formulation on one class of convs, the rest as the policy
says: `rgb` (at most 8 input channels), `map2` (output maps of at most 2x2, but RGB), `map4`
(at most 4x4, but RGB). Each model's train step (`trainer.train_step`, the preset's optimiser,
batch 128 of synthetic images) is compiled once per variant; then the variants take turns, in
alternating order, `--steps` steps per turn; printed: the median ms per step of each and its
ratio to the policy's ("auto").
"""

import functools
import statistics

from absl import app
from absl import flags
import jax

from experiments import cli
from experiments import huge_pages
from experiments.bench import synthetic_steps
from experiments.bench import timing
from xnorjax.ops import conv as conv_lib

CLASSES = {
    "rgb": lambda cin, map_size: cin <= 8,
    "map2": lambda cin, map_size: cin > 8 and map_size <= 4,
    "map4": lambda cin, map_size: cin > 8 and map_size <= 16,
}

def parse_variant(text: str):
  """('class:formulation') -> a policy_override rule forcing the formulation on that class."""
  layer_class, _, formulation = text.partition(":")
  if layer_class not in CLASSES or formulation not in conv_lib.FORMULATIONS[1:]:
    raise app.UsageError(f"--variants: {text!r} is not class:formulation with class one of "
                         f"{', '.join(CLASSES)} and formulation one of "
                         f"{', '.join(conv_lib.FORMULATIONS[1:])}")
  member = CLASSES[layer_class]

  def rule(input_shape, kernel_shape, strides, pads):
    ho, wo = conv_lib.output_hw(input_shape[1:3], kernel_shape[:2], strides, pads)
    return formulation if member(kernel_shape[2], ho * wo) else None
  return rule


def compiled_step(model: str, batch_size: int, rule=None):
  """A callable running n train steps of `model` compiled under the policy with `rule`."""
  s = synthetic_steps.build_steps(model, batch_size)
  compiled, state = synthetic_steps.compile_train_step(s, rule)
  state = [state]

  def run(n: int):
    for _ in range(n):
      state[0], metrics = compiled(state[0], s.images, s.labels)
    return metrics
  return run


def define_flags():
  """The command line's flags (defined only when run as a program, so that importing this module
  next to experiments.bench.train, whose flags have the same names, does not clash)."""
  flags.DEFINE_list("models", ["vgg16", "bin_vgg16"], "Models (presets) to time.")
  flags.DEFINE_list("variants", ["rgb:winograd"],
                    "class:formulation pairs, class one of " + ", ".join(CLASSES))
  flags.DEFINE_integer("batch_size", 128, "Global batch size.")
  flags.DEFINE_integer("steps", 3, "Steps per turn.")
  flags.DEFINE_integer("rounds", 8, "Turns per variant (the median is reported).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  args = flags.FLAGS
  for model in args.models:
    if model not in synthetic_steps.CONFIGS:
      raise app.UsageError(f"--models: {model!r} is not one of "
                           f"{', '.join(synthetic_steps.CONFIGS)}")
  if args.steps < 1 or args.rounds < 1 or args.batch_size < 1:
    raise app.UsageError("--steps, --rounds and --batch_size must be positive")
  rules = {"auto": None, **{v: parse_variant(v) for v in args.variants}}
  print(f"jax {jax.__version__}, batch {args.batch_size}, {args.rounds} turns of {args.steps} "
        "steps per variant, alternating order; ms per step (median)")
  for model in args.models:
    runs = {name: compiled_step(model, args.batch_size, rule) for name, rule in rules.items()}
    calls = {name: functools.partial(run, args.steps) for name, run in runs.items()}
    times = timing.interleaved_times(calls, args.rounds, alternate=True)
    base = statistics.median(times["auto"]) / args.steps
    for name, t in times.items():
      ms = statistics.median(t) / args.steps
      print(f"{model:10s} {name:16s} {1e3 * ms:7.1f} ms  {args.batch_size / ms:6.1f} img/s  "
            f"{ms / base:5.3f} of auto", flush=True)


if __name__ == "__main__":
  huge_pages.reexec_with_huge_pages()
  define_flags()
  cli.run_main(main)
