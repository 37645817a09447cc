# Two entry points, both idempotent and complete on a fresh Debian 12 / Ubuntu 22.04+ machine (as root):
#   make run    set everything up, then run the daemon in the foreground
#   make test   set everything up, then run the test suite
# and make test-kernels: the kernel-sensitive tests on the running kernel and on Debian 12's 6.1
# booted under qemu (docs/kernels.md)
VENV   := .venv
PY     := $(VENV)/bin/python
PYTEST_ARGS ?=
LANE_ARGS ?=
PREFIX ?= /usr/local
LIBDIR := $(PREFIX)/lib/snapd-cores

.PHONY: setup run test test-fast test-kernels lint bench clean install

setup:
	@bash scripts/setup.sh

run: setup
	$(VENV)/bin/snapd daemon --rules rules --state $(CURDIR)/.state --socket $(CURDIR)/.state/ctl.sock

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

# The logic alone: no root, no kernel features, nothing slow (README "Development"). Needs the
# .venv `make setup` built; runs as any user.
test-fast:
	$(PY) -m pytest -m "not kernel and not slow" $(PYTEST_ARGS)

test-kernels: setup
	@bash scripts/kernels.sh
	$(PY) -m tests.kernels.lane $(LANE_ARGS) $(if $(PYTEST_ARGS),-- $(PYTEST_ARGS))

lint: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

bench: setup
	$(PY) bench/gcore_bench.py --set gcore --snapshot both
	$(PY) bench/gcore_bench.py --set freeze --snapshot both
	$(PY) bench/probe_overhead.py
	$(PY) bench/diff_bench.py

# A system install: its own venv (with the distro's bcc), the unit, the rules directory.
install: setup
	/usr/bin/python3 -m venv --system-site-packages $(LIBDIR)
	$(LIBDIR)/bin/pip install -q --disable-pip-version-check .
	install -d -m 0755 $(PREFIX)/bin /etc/snapd-cores/rules.d $(PREFIX)/share/doc/snapd-cores
	ln -sfn $(LIBDIR)/bin/snapd $(PREFIX)/bin/snapd
	install -m 0644 systemd/snapd-cores.service /etc/systemd/system/snapd-cores.service
	install -m 0644 docs/*.md $(PREFIX)/share/doc/snapd-cores/
	install -m 0644 systemd/snapd-cores.service.d/upload.conf $(PREFIX)/share/doc/snapd-cores/upload.conf
	getent group snapd >/dev/null || groupadd --system snapd
	if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@echo "now: systemctl enable --now snapd-cores.service; rules go in /etc/snapd-cores/rules.d/"

clean:
	rm -rf $(VENV) .state build src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
