"""Shared pytest fixtures and markers for the xnorjax suite."""

import numpy as np
import pytest

import xnorjax

requires_extension = pytest.mark.skipif(
    not xnorjax.extension_available(), reason="xnorjax C++ extension not built (run `make install`)")


@pytest.fixture
def rng():
  """A fresh numpy Generator per test, seeded from the test's own entropy (no fixed all-zero data)."""
  seed = np.random.SeedSequence().entropy
  print(f"numpy seed: {seed}")
  return np.random.default_rng(seed)
