# MIRO: every target runs inside .venv and creates it first when it is missing.
# Users with a GPU: make setup TORCH_SPEC="torch torchvision" TORCH_INDEX=https://download.pytorch.org/whl/cu128

SHELL := /bin/bash
PYTHON_BASE ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0 torchvision==0.28.0
TORCH_INDEX ?=
EXTRAS ?= dev,minilm,vae

# The embedded default's paths and sizes (override on the command line, e.g. make demo DEMO_MINUTES=60).
DEMO_DIR ?= demo
N ?= 20000
SIZE ?= 24
MAX_OBJECTS ?= 2
OBJECT_SIZE ?= 0.3 0.5
N_BINS ?= 16
SEED ?= 0
SHARDS ?= $(DEMO_DIR)/shards
SCORED ?= $(DEMO_DIR)/scored
BINS ?= $(DEMO_DIR)/bins.json
REWARDS ?= offline
EXPERIMENT ?= shapes
RUN_DIR ?= $(DEMO_DIR)/train/$(EXPERIMENT)
# Training length of the demo in minutes of this repo's reference machine (2-core CPU); converted to
# optimiser steps so that a run is the same on any machine (faster machines just finish sooner).
DEMO_MINUTES ?= 5
STEPS_PER_MINUTE ?= 650
DEMO_STEPS ?= $(shell echo $$(( $(DEMO_MINUTES) * $(STEPS_PER_MINUTE) )))
PROMPTS ?= conf/prompts/shapes_demo.txt
ARGS ?=

.PHONY: setup test test-slow lint data score-shards fit-bins train samples eval demo bench clean-demo

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
	$(VENV)/bin/miro-data shapes --out $(SHARDS) --n $(N) --size $(SIZE) --max-objects $(MAX_OBJECTS) \
		--object-size $(OBJECT_SIZE) --seed $(SEED) --workers 2 $(ARGS)

score-shards: setup
	$(PY) -m data_prep.score_shards input=$(SHARDS) output=$(SCORED) rewards=$(REWARDS) $(ARGS)

fit-bins: setup
	$(PY) -m data_prep.fit_bins input=$(SCORED) out=$(BINS) n_bins=$(N_BINS) $(ARGS)

train: setup
	$(PY) -m miro.train +experiment=$(EXPERIMENT) paths.data_dir=$(DEMO_DIR) paths.output_dir=$(RUN_DIR) \
		data.image_size=$(SIZE) trainer.max_steps=$(DEMO_STEPS) $(ARGS)

# The same prompts and seeds at every reward target high, then every target low.
samples: setup
	$(VENV)/bin/miro-generate --checkpoint $(RUN_DIR)/export --prompts-file $(PROMPTS) --n 4 --precision bf16 \
		--rewards alignment=10,sharpness=10,colorfulness=10,compressibility=10 --out $(DEMO_DIR)/samples/high
	$(VENV)/bin/miro-generate --checkpoint $(RUN_DIR)/export --prompts-file $(PROMPTS) --n 4 --precision bf16 \
		--rewards alignment=0,sharpness=0,colorfulness=0,compressibility=0 --out $(DEMO_DIR)/samples/low

eval: setup
	$(VENV)/bin/miro-eval --checkpoint $(RUN_DIR)/export --out $(DEMO_DIR)/eval $(ARGS)

# The main job on the embedded default: data -> scores -> bins -> training -> samples -> evaluation.
demo: setup
	$(MAKE) --no-print-directory data ARGS=
	$(MAKE) --no-print-directory score-shards ARGS=
	$(MAKE) --no-print-directory fit-bins ARGS=
	$(MAKE) --no-print-directory train ARGS=
	$(MAKE) --no-print-directory samples ARGS=
	$(MAKE) --no-print-directory eval ARGS=
	@echo
	@echo "Demo done."
	@echo "  samples, all reward targets high: $(DEMO_DIR)/samples/high/grid.png"
	@echo "  samples, all reward targets low:  $(DEMO_DIR)/samples/low/grid.png"
	@echo "  evaluation report:                $(DEMO_DIR)/eval/report.md"
	@echo "  training run (TensorBoard, checkpoints, exported model): $(RUN_DIR)"

bench: setup
	$(PY) bench/bench_scoring.py
	$(PY) bench/bench_train.py
	$(PY) bench/bench_generate.py

clean-demo:
	rm -rf $(DEMO_DIR)
