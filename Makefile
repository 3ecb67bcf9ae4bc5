# Two-command set-up: `make demo` (main job on real Fashion-MNIST) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
APT_GET ?= apt-get

.PHONY: demo fashion-mnist test test-gpu bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP) fashion-mnist
	$(PY) -m resdist demo

# Debian's dataset-fashion-mnist, installed only when the files are missing and we are root
# with apt-get; otherwise the demo's data error says how to get them.
fashion-mnist:
	@if [ ! -f "$(FMNIST_DIR)/train-images-idx3-ubyte.gz" ] && [ "$$(id -u)" = 0 ] \
		&& command -v $(firstword $(APT_GET)) >/dev/null; then \
		echo "Fashion-MNIST not found: installing Debian's dataset-fashion-mnist ..."; \
		$(APT_GET) update -qq && $(APT_GET) install -y -qq dataset-fashion-mnist \
			|| echo "apt-get failed; the demo will say how to get Fashion-MNIST" >&2; \
	fi

# every runtime is in the dev install, so its tests must run, not skip. Each runtime's tests run
# in processes of their own: one process that ran all of them (ExecuTorch, LiteRT with JAX,
# OpenVINO, TFLite Micro) segfaulted in an ExecuTorch test after about twenty others, on every try
# (each runtime's tests alone pass), and an xdist worker died the same way once in three CI runs.
RUNTIME_TESTS := tests/deploy/test_runtimes.py
RUNTIME_PYTEST := RESDIST_REQUIRE_RUNTIMES=openvino,executorch,litert,tflm $(PY) -m pytest -q -n 2 \
	--durations=5 $(RUNTIME_TESTS)
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadgroup --durations=15 --ignore=$(RUNTIME_TESTS)
	$(RUNTIME_PYTEST) -k "openvino or onnxruntime"
	$(RUNTIME_PYTEST) -k "executorch"
	$(RUNTIME_PYTEST) -k "tflite or litert"

test-gpu: $(STAMP)
	$(PY) -m pytest -q -m cuda --durations=15

bench: $(STAMP)
	$(PY) benchmarks/deploy.py
	$(PY) benchmarks/train_speed.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs
