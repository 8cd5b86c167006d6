# The two commands a new user runs (see README):
#   make demo   - set up, then run the main job on the built-in default
#   make test   - set up, then lint, type-check and run every test
# Everything a fresh machine lacks is installed here, into .venv.

PYTHON ?= $(shell pyenv root 2>/dev/null)/versions/3.11.7/bin/python3.11
ifeq ($(wildcard $(PYTHON)),)
PYTHON := python3.11
endif
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUNTIME := runtime

.PHONY: venv demo test check lint typecheck pytest pytest-fast pytest-needs bench clean system docs

$(STAMP): requirements/dev.txt requirements/cloud-init.txt requirements/docs.txt
	$(PYTHON) -m venv $(VENV)
	# Wheels only: a fresh machine has no compiler, and a user should not need one.
	$(BIN)/pip install --quiet --disable-pip-version-check --only-binary :all: -r requirements/dev.txt \
		-r requirements/cloud-init.txt -r requirements/docs.txt
	# The runtime package is standard-library only; make it importable in the venv
	# without installing a copy, so tests always exercise the working tree.
	echo "$(CURDIR)/$(RUNTIME)" > $$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/xenchannel-runtime.pth
	touch $@

venv: $(STAMP)

# Needs root (its sandboxes are namespaces) and debootstrap (it builds its own Debian
# roots); demo/__main__.py says what it runs.
demo: $(STAMP)
	$(BIN)/python -m demo

# The documentation site (module and role reference generated, guides from docs/*.md)
# in .cache/docs-site/html; docs/site/build.sh says how.
docs: $(STAMP)
	sh docs/site/build.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/antsibull-changelog lint

typecheck: $(STAMP)
	$(BIN)/mypy

# System tools the tests use for real (shellcheck, dash, a udevadm with `verify`, Xen's
# own config parser libxlutil from Debian's libxenmisc4.17, cloud-init 22.4 and 25.1 from
# Debian's packages, 23.4, 24.4 and 26.2 installed from tests/fixtures/ with the venv's
# pip): installed or fetched into .cache/ by the project's scripts.
# Idempotent and quick once done; needs root (or sudo) the first time.
system: $(STAMP)
	sh tests/setup-system-packages.sh
	sh tests/oracle/fetch-xen-utils.sh >/dev/null
	sh tests/setup-cloud-init.sh
	sh tests/galaxy_importer/setup.sh >/dev/null

# Inside `make test` the set-up has run once already (tests/tiers.py sets SETUP_DONE).
SYSTEM := $(if $(filter 1,$(SETUP_DONE)),,system)

# The tests that need nothing but the venv (tests/conftest.py says which need more), run
# without capabilities and without network by tests/unprivileged.sh, so that a test that
# needs more than it is marked for fails here.
pytest-fast: $(STAMP)
	sh tests/unprivileged.sh $(BIN)/pytest -p no:cacheprovider -m "not needs" --durations=15

# The tests that need root, `make system`'s packages, docker or minutes of CPU.
# --durations: the slowest tests, so a run's log says where its time went.
pytest-needs: $(STAMP) $(SYSTEM)
	$(BIN)/pytest -m needs --durations=30

# Both, as `make test` runs them.
pytest: pytest-fast pytest-needs

# The fast tier for everyday work: no root, network or docker, a few minutes; the fuzz
# tests at a small example count (make test runs them at their full count).
check: $(STAMP)
	XENCHANNEL_FUZZ_EXAMPLES=$(CHECK_FUZZ_EXAMPLES) $(PYTHON) tests/tiers.py lint typecheck pytest-fast
CHECK_FUZZ_EXAMPLES ?= 60

# ansible-test's gates (issue 5): sanity on Python 3.8-3.13, units, the integration
# targets, with a summary at the end; tests/ansible-test/run.py says what it arranges.
.PHONY: ansible-test
ansible-test: $(STAMP) $(SYSTEM)
	$(BIN)/python tests/ansible-test/run.py

# The molecule scenarios (issue 6) on Debian containers built here, in a private Docker
# engine (docs/molecule.md). `make test` runs them too, through tests/molecule/.
.PHONY: molecule
molecule: $(STAMP)
	sh tests/molecule/run.sh

# The real-Xen end-to-end tier (issue 7, docs/e2e.md): Debian trixie images built and
# cached under .cache/e2e, Xen 4.20 booted under QEMU software emulation with the
# collection's dom0 and guests, then the same template under QEMU alone; prints each
# phase's time and the benchmark's figures. Fails with the reason where it cannot run.
.PHONY: e2e
e2e: $(STAMP) $(SYSTEM)
	$(BIN)/pytest tests/e2e

# Each tier in turn, all of them even after one fails, then each one's time and outcome.
TIERS := lint typecheck pytest-fast pytest-needs ansible-test e2e
test:
	$(PYTHON) tests/tiers.py venv system $(TIERS)

bench: $(STAMP) system
	$(BIN)/python -m benchmarks.run --cloud-init

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
