# Lootify on Ray. See /work/shared/contract/API.md ("Commands").
# Python 3.12 where the machine has one (pyenv's included), else 3.11: a bet costs
# less of its event loops (README, "Benchmarks"). A pyenv shim answers `command -v`
# for a version it cannot run, so each candidate is asked to run.
PYENV_ROOT ?= $(HOME)/.pyenv
ifndef PYTHON
PYTHON := $(shell for p in python3.12 $(wildcard $(PYENV_ROOT)/versions/3.12*/bin/python3.12) \
	python3.11 python3; do $$p -c '' 2>/dev/null && { command -v $$p; break; }; done)
endif
VENV   := .venv
PY     := $(VENV)/bin/python
# Named by the interpreter, so choosing another one rebuilds the venv.
STAMP  := $(VENV)/.installed-$(notdir $(PYTHON))
PYTEST_ARGS ?=

.PHONY: venv up down test bench chaos lint browser

venv: $(STAMP)

# Reinstall only when pyproject.toml or the interpreter changed since the last install.
$(STAMP): pyproject.toml
	[ "$$($(PY) -V 2>&1)" = "$$($(PYTHON) -V 2>&1)" ] || $(PYTHON) -m venv --clear $(VENV)
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
