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
# Molecule's sandboxes (one per scenario) live here; the server runs as postgres, which must reach it.
export PGBACKUP_MOLECULE_DIR ?= /var/tmp/modulo-pgbackup-molecule-$(shell id -u)-$(notdir $(CURDIR))

.PHONY: bootstrap collection demo demo-clean test unit system molecule molecule-default molecule-production production faults sanity units integration-targets lint clean bench bench-smoke
BENCH_SCALE ?= 100
# The benchmark's clusters run as postgres: they need a directory it can reach.
BENCH_WORKDIR ?= /var/tmp

bootstrap:
	@./scripts/bootstrap.sh

# The collection as users get it: `ansible-galaxy collection build` of this tree (dist/), installed
# offline into a collections path of its own. The Molecule scenarios run from that install, not
# from the working tree (the symlink in .collections/ that `make demo` and the other tests use).
VERSION := $(shell sed -n 's/^version: *//p' galaxy.yml)
BUILT_COLLECTIONS := $(CURDIR)/.cache/collections-built
collection: bootstrap
	@rm -rf dist "$(BUILT_COLLECTIONS)"
	ansible-galaxy collection build --output-path dist .
	ANSIBLE_COLLECTIONS_PATH="$(BUILT_COLLECTIONS)" ansible-galaxy collection install --offline \
	  -p "$(BUILT_COLLECTIONS)" dist/modulo-pgbackup-$(VERSION).tar.gz

demo: bootstrap
	@./scripts/demo.sh

demo-clean:
	@$(PY) tests/modulo_app.py stop --pidfile $(SANDBOX)/app/modulo-app.pid >/dev/null 2>&1 || true
	@$(PY) tools/pgsandbox.py stop $(SANDBOX) 2>/dev/null || python3 tools/pgsandbox.py stop $(SANDBOX)
	@rm -rf $(SANDBOX)
	@echo "sandbox removed"

test: bootstrap collection unit system faults production molecule-default molecule-production bench-smoke sanity units integration-targets lint

unit: bootstrap
	cd tests && $(PY) -m pytest -q -p no:cacheprovider unit

# The system tests: modules and playbooks through ansible-playbook against real PostgreSQL 15 and a
# loopback S3 (tests/integration/ holds only ansible-test's targets).
system: bootstrap
	cd tests && $(PY) -m pytest -q -p no:cacheprovider -n $(PYTEST_WORKERS) system

# Every Molecule scenario under molecule/ (create, converge, idempotence, verify, destroy).
molecule: collection
	PGBACKUP_COLLECTIONS_PATH="$(BUILT_COLLECTIONS)" molecule test --all

molecule-default: collection
	PGBACKUP_COLLECTIONS_PATH="$(BUILT_COLLECTIONS)" molecule test --scenario-name default

# The production shape: the controller reaches a Debian-layout database host over ssh as a deploy user
# with sudo, built on this machine by tools/prodhost.py (a user, a sudoers file, an sshd on loopback, a
# pg_createcluster cluster). That needs root: as a normal user both say so and are skipped.
production: bootstrap
	cd tests && $(PY) -m pytest -q -p no:cacheprovider -n $(PYTEST_WORKERS) --dist loadfile -rs production

molecule-production: collection
	@if [ "$$(id -u)" != 0 ]; then \
	  echo "molecule-production: skipped, it needs root (tools/prodhost.py builds a user, an sshd and a cluster)"; \
	else PGBACKUP_COLLECTIONS_PATH="$(BUILT_COLLECTIONS)" molecule test --scenario-name production; fi

# The fault-injection suite: one file per kind of fault; a file's cases share their cluster, so files
# (not single tests) are spread over the workers.
faults: bootstrap
	cd tests && $(PY) -m pytest -q -p no:cacheprovider -n $(PYTEST_WORKERS) --dist loadfile faults

sanity: bootstrap
	@./scripts/ansible-test.sh sanity

# ansible-test's own runs of tests/unit/plugins/ (module_utils, and the modules through
# patch_module_args), in the virtualenv ansible-test builds from tests/unit/requirements.txt.
units: bootstrap
	@./scripts/ansible-test.sh units

# ansible-test integration: one target per module in tests/integration/targets/, against a
# throwaway PostgreSQL 15 cluster that the script starts and removes.
integration-targets: bootstrap
	@./scripts/ansible-test.sh integration

lint: bootstrap
	ansible-lint --offline --profile production
	antsibull-changelog lint

# Side by side with the runbook's commands and pgBackRest, on one pgbench database of BENCH_SCALE.
# The dated results (JSON and Markdown) go to bench/results/, committed; the ratio history image is redrawn from them.
bench: bootstrap
	$(PY) bench/bench.py --scale $(BENCH_SCALE) --workdir $(BENCH_WORKDIR)
	$(PY) bench/plot.py

# A small run in every `make test`, so the benchmark keeps working; checks its output, not its ratios.
bench-smoke: bootstrap
	@out=$$(mktemp -d); trap 'rm -rf "$$out"' EXIT; \
	$(PY) bench/bench.py --smoke --scale 5 --workdir $(BENCH_WORKDIR) --results "$$out" >"$$out/log" 2>&1 \
	  || { tail -50 "$$out/log"; exit 1; }; \
	$(PY) bench/bench.py check "$$out"/*.json

clean: demo-clean
	rm -rf $(VENV) .collections tests/output dist
