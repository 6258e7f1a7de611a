# MIRO: every target runs inside .venv and creates it first when it is missing.
# Users with a GPU: make setup TORCH_SPEC="torch torchvision" TORCH_INDEX=https://download.pytorch.org/whl/cu128

SHELL := /bin/bash
PYTHON_BASE ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0 torchvision==0.28.0
TORCH_INDEX ?=
EXTRAS ?= dev,minilm

# The embedded default's paths and sizes (override on the command line).
DEMO_DIR ?= demo
N ?= 20000
SIZE ?= 32
SEED ?= 0
SHARDS ?= $(DEMO_DIR)/shards
SCORED ?= $(DEMO_DIR)/scored
BINS ?= $(DEMO_DIR)/bins.json
REWARDS ?= [alignment,sharpness,colorfulness,compressibility]
DEMO_MINUTES ?= 5
ARGS ?=

.PHONY: setup test test-slow lint data score-shards fit-bins train demo bench clean-demo

$(VENV)/.installed: pyproject.toml
	$(PYTHON_BASE) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	$(PY) -c "import sys; from miro.utils.torchvision_shim import main; sys.exit(main(['--install']))"
	touch $@

setup: $(VENV)/.installed

test: setup
	$(PY) -m pytest

test-slow: setup
	$(PY) -m pytest -m slow

lint: setup
	$(PY) -m ruff check miro data_prep tests bench

data: setup
	$(VENV)/bin/miro-data shapes --out $(SHARDS) --n $(N) --size $(SIZE) --seed $(SEED) $(ARGS)

score-shards: setup
	$(PY) -m data_prep.score_shards input=$(SHARDS) output=$(SCORED) rewards=$(REWARDS) $(ARGS)

fit-bins: setup
	$(PY) -m data_prep.fit_bins input=$(SCORED) out=$(BINS) $(ARGS)

bench: setup
	$(PY) bench/bench_scoring.py $(ARGS)

clean-demo:
	rm -rf $(DEMO_DIR)
