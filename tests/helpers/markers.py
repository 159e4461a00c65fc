"""pytest markers shared by the test modules."""

import pytest

import xnorjax

requires_extension = pytest.mark.skipif(
    not xnorjax.extension_available(), reason="xnorjax C++ extension not built (run `make install`)")
