# xnorjax: `make train` and `make test` each set up everything on a fresh machine with Python 3.10+.
#   make train   virtual environment, extension build, then train bin_vgg16 on CIFAR-10
#   make test    virtual environment, extension build, then the whole pytest suite

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
MODEL ?= bin_vgg16
WORKDIR ?= runs/$(MODEL)
TRAIN_FLAGS ?=
PYTEST_FLAGS ?=

NATIVE_SOURCES := CMakeLists.txt pyproject.toml $(shell find ffi -name '*.cc' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh')

.PHONY: all install build train test bench sanitize clean

all: install

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

# Build requirements first, so the extension builds against the venv's own jaxlib headers.
# Builds run without isolation, in this venv: dependencies that ship only as sdists (promise, from
# tensorflow-datasets) need a setuptools with bdist_wheel, which a new venv's setuptools may lack.
$(VENV)/.deps: pyproject.toml | $(PY)
	$(PIP) install "setuptools>=70.1" wheel "scikit-build-core>=0.10" "nanobind>=2.0" "jax==0.10.2" "jaxlib==0.10.2"
	touch $@

# Editable install of the package with every extra; rebuilt whenever a native source changes.
$(VENV)/.installed: $(VENV)/.deps $(NATIVE_SOURCES)
	$(PIP) install --no-build-isolation -e ".[experiments,tfds,test]"
	$(PY) -c "import xnorjax; xnorjax.require_extension(); print('xnorjax', xnorjax.__version__, 'extension OK')"
	touch $@

install build: $(VENV)/.installed

train: $(VENV)/.installed
	$(PY) -m experiments.train --model=$(MODEL) --workdir=$(WORKDIR) $(TRAIN_FLAGS)

test: $(VENV)/.installed
	$(PY) -m pytest $(PYTEST_FLAGS)

# The CPU kernels built with AddressSanitizer + UndefinedBehaviorSanitizer (build/sanitize), and the
# kernel tests run against a copy of the package (build/sanitize/pkg) holding that module; the normal
# build is left alone (python -P: the worktree root is not put first on the path). Leak detection
# is off: the Python interpreter itself leaks at exit.
SANITIZE_TESTS ?= tests/test_xnor_ops.py tests/test_packing.py tests/test_float_conv.py tests/test_winograd.py tests/test_conv_geometry.py
SANITIZE_DIR := build/sanitize
sanitize: | $(PY)
	cmake -S . -B $(SANITIZE_DIR) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPython_EXECUTABLE=$(abspath $(PY)) -DXNORJAX_CUDA=OFF -DXNORJAX_SANITIZE=ON
	cmake --build $(SANITIZE_DIR) -j2 --target _ffi
	rm -rf $(SANITIZE_DIR)/pkg && mkdir -p $(SANITIZE_DIR)/pkg
	cp -r xnorjax $(SANITIZE_DIR)/pkg/ && rm -f $(SANITIZE_DIR)/pkg/xnorjax/_ffi*.so
	cp $(SANITIZE_DIR)/_ffi*.so $(SANITIZE_DIR)/pkg/xnorjax/
	LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	  ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	  PYTHONPATH=$(abspath $(SANITIZE_DIR)/pkg) $(PY) -P -m pytest -q -p no:randomly -p no:cacheprovider $(PYTEST_FLAGS) $(SANITIZE_TESTS)

clean:
	rm -rf build $(VENV) .pytest_cache
