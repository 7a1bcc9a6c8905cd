# Set up a virtual environment, run the reference experiment, run the tests.
#   make run    - the reference experiment: 10 clients x 6000 IID MNIST samples, 10 rounds
#   make smoke  - a complete small run (5 clients, 3 rounds) in about 2 minutes
#   make test   - the test suite (unit + end-to-end simulations)
#   make lint   - ruff and mypy (their settings in pyproject.toml)
# Variables: DATA_DIR (holds MNIST/raw; default ~/.cache/fl-app/data), NUM_CLIENTS, ROUNDS, RUN_CONFIG, PYTHON, VENV,
#   TORCH (the torch/torchvision pins), TORCH_INDEX (e.g. cpu, cu126: torch from that PyTorch wheel index).

PYTHON ?= python3
VENV ?= .venv
DATA_DIR ?= $(HOME)/.cache/fl-app/data
NUM_CLIENTS ?= 10
ROUNDS ?= 10
CPUS_PER_CLIENT ?= 1
GPUS_PER_CLIENT ?= 0
RUN_CONFIG ?=
TORCH ?= torch==2.14.1 torchvision==0.29.1
TORCH_INDEX ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA := $(abspath $(DATA_DIR))

.PHONY: install data run smoke test lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "error: Python 3.11 or newer is needed (flwr 1.42, flwr-datasets 0.6, tomllib); $(PYTHON) is " + sys.version.split()[0] + ": run make PYTHON=python3.11 ...")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH)$(if $(TORCH_INDEX), --index-url https://download.pytorch.org/whl/$(TORCH_INDEX))
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

# MNIST into DATA_DIR, downloaded once (11 MB) if it is not there: before any run or test,
# so that nothing downloads during the tests. MNIST_MIRROR: a URL serving the *-ubyte.gz files.
data: $(STAMP)
	$(BIN)/python -m data.mnist "$(DATA)" $(if $(MNIST_MIRROR),--mirror "$(MNIST_MIRROR)")

run: data
	$(BIN)/python run_simulation.py --num-clients $(NUM_CLIENTS) --rounds $(ROUNDS) \
		--cpus-per-client $(CPUS_PER_CLIENT) --gpus-per-client $(GPUS_PER_CLIENT) \
		--run-config "data-dir='$(DATA)' $(RUN_CONFIG)"

# A complete small run (every output, plots included) in about 2 minutes on 2 CPU cores:
# 5 clients x 1500 samples, 3 rounds, the reference CNN; ~96% test accuracy.
smoke: data
	$(BIN)/python run_simulation.py --num-clients 5 --rounds 3 \
		--run-config "data-dir='$(DATA)' samples-per-client=1500 $(RUN_CONFIG)"

# Unit tests on two workers (one test file each at a time); then the integration tests,
# one at a time: they time federations of several processes.
test: data
	FL_APP_MNIST_DIR="$(DATA)" $(BIN)/python -m pytest -m "not integration" -n 2 --dist loadfile
	FL_APP_MNIST_DIR="$(DATA)" $(BIN)/python -m pytest -m integration

# ruff over the whole checkout; mypy over the files pyproject's [tool.mypy] names.
lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/mypy

clean:
	rm -rf $(VENV) outputs .pytest_cache
