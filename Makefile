# Two commands on a fresh machine: `make run` and `make test`.
# Each creates .venv when missing, installs the pinned requirements,
# fetches the data when missing, then does its job; a second call reuses them.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: run test data venv venv-dev bench clean

run: venv data
	mkdir -p build
	$(PY) face_tagger/face_tagger.py --json --output-dir build/tagged data/images/* > build/results.jsonl || true
	$(PY) -c "import pandas as pd; df = pd.read_json('build/results.jsonl', lines=True); \
	best = df[df.faces == df.faces.max()]; \
	print(f'{len(df)} images, {int((df.status != \"ok\").sum())} failed'); \
	[print(f'most faces: {r.image} with {int(r.faces)}') for r in best.itertuples()]"

test: venv-dev data
	$(PY) -m pytest

bench: venv-dev data
	$(PY) bench/worker.py

data: data/ground_truth.json

venv: $(VENV)/.runtime-installed
venv-dev: $(VENV)/.dev-installed

$(VENV)/.runtime-installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -r requirements.txt
	touch $@

$(VENV)/.dev-installed: requirements-dev.txt $(VENV)/.runtime-installed
	$(PIP) -r requirements-dev.txt
	touch $@

data/ground_truth.json: | $(VENV)/.runtime-installed
	$(PY) -m face_data.fetch

clean:
	rm -rf build
