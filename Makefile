# Two-command set-up: `make demo` (main job on real Fashion-MNIST) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-gpu bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m resdist demo

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --durations=15

test-gpu: $(STAMP)
	$(PY) -m pytest -q -m cuda --durations=15

bench: $(STAMP)
	$(PY) benchmarks/deploy.py
	$(PY) benchmarks/train_speed.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs
