# xnorjax: `make train` and `make test` each set up everything on a fresh machine with Python 3.10+.
#   make train   virtual environment, extension build, then train bin_vgg16 on CIFAR-10
#   make test    virtual environment, extension build, then the whole pytest suite
#   make install-check   `pip install .` into a fresh virtual environment, then import and run a kernel

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
MODEL ?= bin_vgg16
WORKDIR ?= runs/$(MODEL)
TRAIN_FLAGS ?=
PYTEST_FLAGS ?=
# pytest-xdist workers: 2 halves the suite's wall time on a 2-core machine (most tests compile or
# start a process on one core); PYTEST_WORKERS=0 runs it in this process.
PYTEST_WORKERS ?= 2

# The exact versions `make` installs; pyproject.toml declares the ranges a user's environment may use.
CONSTRAINTS := constraints.txt
PIP_INSTALL := $(PIP) install -c $(CONSTRAINTS)

NATIVE_SOURCES := CMakeLists.txt pyproject.toml $(shell find ffi -name '*.cc' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh')

.PHONY: all install build train test install-check sanitize clean

all: install

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

# Build requirements first, so the extension builds against the venv's own jaxlib headers.
# Builds run without isolation, in this venv: dependencies that ship only as sdists (promise, from
# tensorflow-datasets) need a setuptools with bdist_wheel, which a new venv's setuptools may lack.
$(VENV)/.deps: pyproject.toml $(CONSTRAINTS) | $(PY)
	$(PIP_INSTALL) setuptools wheel scikit-build-core nanobind jax jaxlib
	touch $@

# Editable install of the package with every extra; rebuilt whenever a native source changes.
$(VENV)/.installed: $(VENV)/.deps $(NATIVE_SOURCES)
	$(PIP_INSTALL) --no-build-isolation -e ".[experiments,tfds,test]"
	$(PY) -c "import xnorjax; xnorjax.require_extension(); print('xnorjax', xnorjax.__version__, 'extension OK')"
	touch $@

install build: $(VENV)/.installed

train: $(VENV)/.installed
	$(PY) -m experiments.train --model=$(MODEL) --workdir=$(WORKDIR) $(TRAIN_FLAGS)

test: $(VENV)/.installed
	$(PY) -m pytest -n $(PYTEST_WORKERS) $(PYTEST_FLAGS)

# What a user's `pip install .` does: an isolated build (its build requirements resolved from
# pyproject.toml's ranges, pinned by the constraints) into a new environment, then a packed kernel
# run from outside the checkout. CUDA off: the CUDA build is checked by `make test`'s own build.
INSTALL_CHECK_DIR ?= build/install-check
install-check:
	rm -rf $(INSTALL_CHECK_DIR)
	$(PYTHON) -m venv $(INSTALL_CHECK_DIR)/venv
	$(INSTALL_CHECK_DIR)/venv/bin/python -m pip install --upgrade pip
	PIP_CONSTRAINT=$(abspath $(CONSTRAINTS)) $(INSTALL_CHECK_DIR)/venv/bin/python -m pip install \
	  -Ccmake.define.XNORJAX_CUDA=OFF -Cbuild-dir=$(abspath $(INSTALL_CHECK_DIR))/build .
	cd $(INSTALL_CHECK_DIR) && venv/bin/python -c "import numpy as np, xnorjax, xnorjax.nn, \
	  xnorjax.quantizers; from xnorjax.ops import pack_bits, xnor_dense; xnorjax.require_extension(); \
	  x = np.sign(np.random.default_rng(0).standard_normal((4, 70))).astype(np.float32); \
	  assert xnorjax.__file__.startswith('$(abspath $(INSTALL_CHECK_DIR))'), xnorjax.__file__; \
	  assert (np.asarray(xnor_dense(x, x.T)) == (x @ x.T).astype(np.int32)).all(); \
	  print('pip install . OK:', xnorjax.__file__)"

# The CPU kernels built with AddressSanitizer + UndefinedBehaviorSanitizer (build/sanitize), and the
# kernel tests run against a copy of the package (build/sanitize/pkg) holding that module; the normal
# build is left alone. The tests run in a small venv that sees .venv's packages through a .pth line
# (so the editable install's import hook, which would load the normal build, is not installed) and
# first check that the sanitized module is the one imported; PYTHONSAFEPATH keeps the checkout's
# own xnorjax/ (no extension there) off the path of the tests' subprocesses too (Python 3.11+).
# Leak detection is off: the Python interpreter itself leaks at exit.
SANITIZE_TESTS ?= tests/kernels/test_xnor_ops.py tests/kernels/test_packing.py tests/kernels/test_float_conv.py tests/kernels/test_winograd.py tests/kernels/test_conv_geometry.py
SANITIZE_DIR := build/sanitize
SANITIZE_PY := $(SANITIZE_DIR)/venv/bin/python
sanitize: $(VENV)/.installed
	cmake -S . -B $(SANITIZE_DIR) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPython_EXECUTABLE=$(abspath $(PY)) -DXNORJAX_CUDA=OFF -DXNORJAX_SANITIZE=ON
	cmake --build $(SANITIZE_DIR) -j2 --target _ffi
	rm -rf $(SANITIZE_DIR)/pkg $(SANITIZE_DIR)/venv && mkdir -p $(SANITIZE_DIR)/pkg
	cp -r xnorjax $(SANITIZE_DIR)/pkg/ && rm -f $(SANITIZE_DIR)/pkg/xnorjax/*.so
	cp $(SANITIZE_DIR)/_ffi*.so $(SANITIZE_DIR)/pkg/xnorjax/
	$(PYTHON) -m venv $(SANITIZE_DIR)/venv
	$(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" > \
	  "$$($(SANITIZE_PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/xnorjax_deps.pth"
	LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	  ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	  PYTHONPATH=$(abspath $(SANITIZE_DIR)/pkg) PYTHONSAFEPATH=1 sh -c '$(SANITIZE_PY) -c "import xnorjax._ffi as f; \
	  assert f.__file__.startswith(\"$(abspath $(SANITIZE_DIR)/pkg)\"), f.__file__; print(\"sanitized:\", f.__file__)" && \
	  $(SANITIZE_PY) -m pytest -q -p no:randomly -p no:cacheprovider $(PYTEST_FLAGS) $(SANITIZE_TESTS)'

clean:
	rm -rf build $(VENV) .pytest_cache
