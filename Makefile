# pgbust — two set-up commands: `make demo` and `make test`. Everything else is a building block.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SERVICES_ENV := .pgbust/services.env
# Loads DATABASE_URL / REDIS_URL / CELERY_BROKER_URL chosen by `make services` (unless already set).
WITH_SERVICES := set -a && . ./$(SERVICES_ENV) && set +a &&

.PHONY: help install services test test-fast lint format demo bench chaos clean stop-services

help:
	@echo "make demo    - set up, start the stack, run the three-mode staleness comparison"
	@echo "make test    - set up and run lint, type checks and every test"
	@echo "make install | services | lint | format | bench | chaos | clean"

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { apt-get update -qq && apt-get install -y -qq python3 python3-venv; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || { apt-get update -qq && apt-get install -y -qq python3-venv && $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,bench]'
	@touch $(STAMP)

install: $(STAMP)

services: install
	@$(PY) -m pgbust.devservers ensure --env-file $(SERVICES_ENV)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: lint services
	$(WITH_SERVICES) $(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: services
	$(WITH_SERVICES) $(PY) -m pytest -q -x $(PYTEST_ARGS)

demo: services
	$(WITH_SERVICES) $(PY) -m db upgrade && \
	$(WITH_SERVICES) $(PY) -m loadtest compare --duration 20 --out bench/results/demo

bench: services
	$(WITH_SERVICES) $(PY) -m bench all --out bench/results

chaos: services
	$(WITH_SERVICES) $(PY) -m pytest -q tests/chaos --chaos-full

stop-services:
	-@$(PY) -m pgbust.devservers stop 2>/dev/null

clean: stop-services
	rm -rf .pgbust $(VENV) .mypy_cache .ruff_cache .pytest_cache build *.egg-info
