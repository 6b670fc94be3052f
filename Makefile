# Lootify on Ray. See /work/shared/contract/API.md ("Commands").
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: venv up down test bench chaos lint browser

venv: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall only when pyproject.toml changed since the last install.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -e '.[dev]'
	touch $(STAMP)

up: venv
	$(PY) scripts/cluster.py up

down: venv
	$(PY) scripts/cluster.py down

test: lint browser
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The page's browser test drives Debian's Chromium: installed here when missing (as
# root, from the distribution's packages); without it that test is skipped, loudly.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] \
		&& apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
		|| echo "make: Chromium could not be installed; the browser test will be skipped"

bench: venv
	$(PY) scripts/bench.py
	$(PY) scripts/bench_http.py
	$(PY) scripts/bench_scale.py

# A stack of its own (PostgreSQL, a Ray Cluster, Serve) under load and faults, then the
# audit: CHAOS_ARGS="--minutes 2 --json chaos.json" for a shorter run.
CHAOS_ARGS ?=
chaos: venv
	$(PY) scripts/chaos.py $(CHAOS_ARGS)

# ruff, mypy, and the import contracts in pyproject.toml (layers, no cycles).
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy actors gateway serve_app.py scripts
	$(VENV)/bin/lint-imports
