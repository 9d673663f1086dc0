# `make run` starts the service (embedded: SQLite, local artifacts, file broker); `make test` runs the suite.
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU build of torch; on this project's machines pip finds 2.13.0 locally. Elsewhere, add
# `--index-url https://download.pytorch.org/whl/cpu` to avoid a multi-GB CUDA build.
TORCH ?= torch==2.13.0
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test test-gpu install install-test lint bench

run: install
	$(VENV)/bin/tensorpress up --host $(HOST) --port $(PORT)

test: install-test
	$(PY) -m pytest

# On an NVIDIA machine (torch with CUDA; TensorRT for its tests): every GPU test, in a few minutes.
test-gpu: install-test
	$(PY) -m pytest -m gpu -v -rs tests/gpu

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[test]'
	touch $@

lint: install-test
	$(VENV)/bin/ruff check app workers tests benchmarks migrations
	$(VENV)/bin/lint-imports

# Writes docs/benchmarks.md: the service beside hand-written baselines (~15 min). The older focused scripts
# (benchmarks/digits.py, engines.py, structured.py, regression_gate.py, goal_search.py, reliability.py) run alone.
bench: install-test
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) benchmarks/suite.py
