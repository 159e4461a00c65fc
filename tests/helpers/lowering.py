"""What a jitted program calls once lowered for a platform, read without running it (the CUDA
lowering works here without a GPU)."""

import re


def custom_call_targets(fn, args, platform: str) -> set[str]:
  """The custom-call targets of jitted `fn` traced on `args` and lowered for `platform`."""
  text = fn.trace(*args).lower(lowering_platforms=(platform,)).as_text()
  return set(re.findall(r"custom_call @([\w.]+)", text))
