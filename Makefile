# Two commands on a fresh machine: `make run` and `make test`.
# Each creates .venv when missing, installs the pinned requirements,
# fetches the data when missing, then does its job.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: run test data venv venv-dev clean

venv: $(VENV)/.runtime-installed
venv-dev: $(VENV)/.dev-installed

$(VENV)/.runtime-installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.dev-installed: requirements.txt requirements-dev.txt $(VENV)/.runtime-installed
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

data: data/ground_truth.json

data/ground_truth.json: | $(VENV)/.runtime-installed
	$(PY) -m face_data.fetch

clean:
	rm -rf build
