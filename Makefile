# Quick start: `make demo` runs the main job on the local default; `make test` installs and runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup browser test demo bench clean

setup: $(STAMP)

# Pinned direct dependencies live in pyproject.toml; requirements.lock pins the whole resolved set.
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[dev,describe,deploy]'
	touch $(STAMP)

# The report's browser test drives Debian's Chromium; it is installed where we can (root with apt), else the test skips.
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium and chromium-driver for the browser test"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			chromium chromium-driver) >/dev/null 2>&1 || echo "could not install chromium: the browser test will skip"; \
	else echo "no chromium and not root: the browser test will skip"; fi

test: setup browser
	$(BIN)/python -m pytest

demo: setup
	$(BIN)/discover demo

bench: setup
	$(BIN)/python tests/benchmarks/bench_similarity.py

clean:
	rm -rf $(VENV) .pytest_cache discover-runs
