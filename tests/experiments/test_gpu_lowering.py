"""The training programs as a GPU would compile them, lowered for CUDA here without a GPU.

On a GPU the conv policy takes XLA's convs (cuDNN) and the binary layers' "auto" implementation
the float product (XLA's convs) too:
a CPU-only FFI target in such a program (the Winograd or direct float conv, the CPU packed
kernels) has no CUDA implementation, and experiments/gpu/run.sh would fail to compile it there.
"""

import jax
from helpers import lowering
import pytest

from experiments.bench import synthetic_steps

MODELS = ["vgg16", "bin_vgg16", "nin", "bin_nin", "resnet18", "bin_resnet18"]


def _programs(model: str):
  """Freshly jitted steps: a jitted function keeps its first trace, and the conv policy is chosen
  while tracing, so the CPU and the GPU checks each need their own."""
  s = synthetic_steps.build_steps(model, 8)
  return {"train": (s.step_fn, (s.state, s.images, s.labels)),
          "eval": (s.eval_fn, (s.state["params"], s.state["rest"], s.images, s.labels, s.mask))}


@pytest.mark.parametrize("model", MODELS)
def test_training_programs_for_cuda_call_no_cpu_kernel(model, monkeypatch):
  # The CPU programs do call the extension's kernels (what this test would catch on a GPU): the
  # Winograd float conv where the CPU has AVX-512F, the packed kernels in the binary models.
  if jax.default_backend() == "cpu":
    from xnorjax import _native  # pylint: disable=g-import-not-at-top
    from xnorjax.ops import float_conv  # pylint: disable=g-import-not-at-top
    if _native.extension_available():
      train_fn, train_args = _programs(model)["train"]
      cpu_calls = lowering.custom_call_targets(train_fn, train_args, "cpu")
      if float_conv.available():
        assert "xnorjax_winograd_conv" in cpu_calls
      if model.startswith("bin_"):
        assert any(c.startswith("xnorjax_xnor_conv") for c in cpu_calls), cpu_calls
  # ... the same programs traced as on a GPU call none.
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  for name, (fn, args) in _programs(model).items():
    calls = lowering.custom_call_targets(fn, args, "cuda")
    assert not {c for c in calls if c.startswith("xnorjax_")}, (name, calls)
