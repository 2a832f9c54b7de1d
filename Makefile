# modulo.pgbackup: two commands matter.
#   make demo   the nightly backup and a restore on an embedded sandbox cluster
#   make test   every test (what CI runs)
SHELL := /bin/bash
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python
export PATH := $(VENV)/bin:$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
SANDBOX ?= $(CURDIR)/.sandbox
PYTEST_WORKERS ?= 2

.PHONY: bootstrap demo demo-clean test unit integration sanity lint clean bench bench-smoke
BENCH_SCALE ?= 100
# The benchmark's clusters run as postgres: they need a directory it can reach.
BENCH_WORKDIR ?= /var/tmp

bootstrap:
	@./scripts/bootstrap.sh

demo: bootstrap
	@./scripts/demo.sh

demo-clean:
	@$(PY) tools/pgsandbox.py stop $(SANDBOX) 2>/dev/null || python3 tools/pgsandbox.py stop $(SANDBOX)
	@rm -rf $(SANDBOX)
	@echo "sandbox removed"

test: bootstrap unit integration bench-smoke sanity lint

unit: bootstrap
	cd tests && $(PY) -m pytest -q -p no:cacheprovider unit

integration: bootstrap
	cd tests && $(PY) -m pytest -q -p no:cacheprovider -n $(PYTEST_WORKERS) integration

sanity: bootstrap
	@./scripts/ansible-test.sh sanity

lint: bootstrap
	ansible-lint --offline --profile production
	antsibull-changelog lint

# Side by side with the runbook's commands and pgBackRest, on one pgbench database of BENCH_SCALE.
bench: bootstrap
	$(PY) bench/bench.py --scale $(BENCH_SCALE) --workdir $(BENCH_WORKDIR)

# A small run in every `make test`, so the benchmark keeps working; checks its output, not its ratios.
bench-smoke: bootstrap
	@out=$$(mktemp -d); trap 'rm -rf "$$out"' EXIT; \
	$(PY) bench/bench.py --smoke --scale 5 --workdir $(BENCH_WORKDIR) --results "$$out" >"$$out/log" 2>&1 \
	  || { tail -50 "$$out/log"; exit 1; }; \
	$(PY) bench/bench.py check "$$out"/*.json

clean: demo-clean
	rm -rf $(VENV) .collections tests/output
