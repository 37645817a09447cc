# Two entry points, both idempotent and complete on a fresh Debian 12 / Ubuntu 22.04+ machine (as root):
#   make run    set everything up, then run the daemon in the foreground
#   make test   set everything up, then run the test suite
VENV   := .venv
PY     := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup run test lint bench clean install

setup:
	@bash scripts/setup.sh

run: setup
	$(VENV)/bin/snapd daemon --foreground --rules rules --state $(CURDIR)/.state --socket $(CURDIR)/.state/ctl.sock

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

bench: setup
	$(PY) bench/gcore_bench.py

clean:
	rm -rf $(VENV) .state build src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
