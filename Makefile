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

.PHONY: bootstrap demo demo-clean test unit integration faults sanity lint clean

bootstrap:
	@./scripts/bootstrap.sh

demo: bootstrap
	@./scripts/demo.sh

demo-clean:
	@$(PY) tools/pgsandbox.py stop $(SANDBOX) 2>/dev/null || python3 tools/pgsandbox.py stop $(SANDBOX)
	@rm -rf $(SANDBOX)
	@echo "sandbox removed"

test: bootstrap unit integration faults sanity lint

unit: bootstrap
	cd tests && $(PY) -m pytest -q -p no:cacheprovider unit

integration: bootstrap
	cd tests && $(PY) -m pytest -q -p no:cacheprovider -n $(PYTEST_WORKERS) integration

# The fault-injection suite: one file per kind of fault; a file's cases share their cluster, so files
# (not single tests) are spread over the workers.
faults: bootstrap
	cd tests && $(PY) -m pytest -q -p no:cacheprovider -n $(PYTEST_WORKERS) --dist loadfile faults

sanity: bootstrap
	@./scripts/ansible-test.sh sanity

lint: bootstrap
	ansible-lint --offline --profile production
	antsibull-changelog lint

clean: demo-clean
	rm -rf $(VENV) .collections tests/output
