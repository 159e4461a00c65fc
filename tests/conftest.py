"""Shared pytest fixtures of the xnorjax suite (markers and other helpers: tests/helpers/).

Layout: tests/library (quantizers, layers, models, deploy, summary), tests/kernels (the packed and
float C++ / CUDA kernels and the build), tests/experiments (training, data, evaluation, reports,
command lines, benchmarks' and GPU scripts' logic).
"""

import numpy as np
import pytest


@pytest.fixture
def rng():
  """A fresh numpy Generator per test, seeded from the test's own entropy (no fixed all-zero data)."""
  seed = np.random.SeedSequence().entropy
  print(f"numpy seed: {seed}")
  return np.random.default_rng(seed)
