# Quick start: `make demo` runs the main job on the local default; `make test` installs and runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test demo bench clean

setup: $(STAMP)

# Pinned direct dependencies live in pyproject.toml; requirements.lock pins the whole resolved set.
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[dev]'
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest

demo: setup
	$(BIN)/discover demo

bench: setup
	$(BIN)/python tests/benchmarks/bench_similarity.py

clean:
	rm -rf $(VENV) .pytest_cache discover-runs
