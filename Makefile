# Two commands on a fresh machine: `make demo` and `make test`.
# Each creates .venv if it is missing and installs what it needs: on a machine
# without CUDA, torch==2.13.0 (the CPU wheel); with CUDA, whatever torch is already
# importable is kept.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mixemb-installed
DEMO_DIR ?= runs/demo

.PHONY: demo test lint format bench clean results

$(PY):
	python3 -m venv $(VENV)

$(STAMP): $(PY) setup.py pyproject.toml
	@if ! $(PY) -c "import torch" 2>/dev/null; then \
	  if command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install -q torch; \
	  else $(PY) -m pip install -q torch==2.13.0; fi; fi
	$(PY) -m pip install -q numpy pytest pytest-benchmark hypothesis ruff==0.17.6 pybind11 ninja triton wheel setuptools
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mixemb demo --data movielens-100k --model mf --dim 64 --ratio 0.2 \
	  --out $(DEMO_DIR)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m compileall -q mixemb kernels bench tests experiments scripts setup.py

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: lint
	$(PY) -m pytest -q

# Not part of `make test`: hours on a laptop CPU. Resumable (rerun to continue).
# RESULTS_PRESET: a preset of experiments/presets.toml (quick, full).
RESULTS_PRESET ?= quick
# the cells, committed with docs/results.md (a fresh clone resumes or re-renders from them)
RESULTS_OUT ?= docs/results/cells
results: $(STAMP)
	-$(PY) -m pip install -q matplotlib  # the plots (the extra "plot"); skipped if it fails
	$(PY) -m experiments run --preset $(RESULTS_PRESET) --out $(RESULTS_OUT)

bench: $(STAMP)
	$(PY) bench/bench_reference.py

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache
