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
CHECKPOINT ?= $(RUN_DIR)/export
EVAL_DIR ?= $(DEMO_DIR)/eval
WORKERS ?= 2
# Training length of the demo in minutes of this repo's reference machine (2-core CPU); converted to
# optimiser steps so that a run is the same on any machine (faster machines just finish sooner).
# 6 keeps the whole demo, set-up included, under 10 minutes from a fresh clone (8 min 49 s measured) and
# draws the captioned shapes and colours (docs/demo.md); STEPS_PER_MINUTE is the demo model's measured rate.
DEMO_MINUTES ?= 6
STEPS_PER_MINUTE ?= 500
DEMO_STEPS ?= $(shell echo $$(( $(DEMO_MINUTES) * $(STEPS_PER_MINUTE) )))
PROMPTS ?= conf/prompts/shapes_demo.txt
ARGS ?=
# The pipeline's stage targets (data, score-shards, fit-bins, train, eval, grpo-train) are its one
# definition: the evidence study (make report, miro/shapes/study/) runs them with its own variables and
# SETUP= (it already runs inside a working environment, so make must not build .venv first).
SETUP ?= setup

.PHONY: setup lock test test-slow test-app app app-deps app-screenshot lint data caption-shards score-shards fit-bins cache-latents train samples eval demo grpo grpo-train grpo-study report bench bench-gpu clean-demo parity

# Every package but torch is installed at the version constraints.txt pins (make lock regenerates it).
CONSTRAINTS ?= constraints.txt

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON_BASE) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e ".[$(EXTRAS)]"
	$(PY) -c "import sys; from miro.utils.torchvision_shim import main; sys.exit(main(['--install']))"
	touch $@

setup: $(VENV)/.installed

# The CPU smoke test of the GPU benchmark (tests/test_bench_smoke.py) runs the reference network too.
test: setup .bench/miro_t2i/.installed
	$(PY) -m pytest

# constraints.txt from a fresh resolution of every extra (tools/write_constraints.py); commit the result.
lock: setup
	$(PY) tools/write_constraints.py

test-slow: setup
	$(PY) -m pytest -m slow; rc=$$?; if [ $$rc -eq 5 ]; then echo "no test is marked slow at present"; else exit $$rc; fi

# The web app and its browser test (docs/app.md): the app and apptest extras, installed only when missing,
# and Debian's chromium (apt-get install chromium), which Playwright is pointed at (it downloads no browser).
APP_PORT ?= 7860
CHROMIUM ?= /usr/bin/chromium
TEST_ARTIFACTS ?= build/test-app

app-deps: setup
	@$(PY) -c "import importlib.util as u, sys; sys.exit(not (u.find_spec('gradio') and u.find_spec('playwright')))" \
		|| $(PY) -m pip install -q -c $(CONSTRAINTS) -e ".[$(EXTRAS),app,apptest]"

app: app-deps
	@if [ "$(CHECKPOINT)" = "$(RUN_DIR)/export" ] && [ ! -f "$(CHECKPOINT)/config.json" ]; then \
		echo "make app: no model at $(CHECKPOINT): run make demo first (or make app CHECKPOINT=owner/name)"; exit 2; fi
	$(VENV)/bin/miro-app --checkpoint $(CHECKPOINT) --port $(APP_PORT) $(ARGS)

# The README's screenshot (docs/app.png) of the app serving a trained model (default: make demo's export).
app-screenshot: app-deps
	@test -x $(CHROMIUM) || { echo "make app-screenshot: no browser at $(CHROMIUM): apt-get install chromium"; exit 2; }
	$(PY) tools/app_screenshot.py --checkpoint $(CHECKPOINT) --chromium $(CHROMIUM) --out docs/app.png $(ARGS)

test-app: app-deps
	@test -x $(CHROMIUM) || { echo "make test-app: no browser at $(CHROMIUM): apt-get install chromium"; exit 2; }
	MIRO_CHROMIUM=$(CHROMIUM) MIRO_TEST_ARTIFACTS=$(TEST_ARTIFACTS) $(PY) -m pytest -m app -p no:cacheprovider

lint: setup
	$(PY) -m ruff check miro data_prep tests bench tools parity

data: $(SETUP)
	$(PY) -m miro.shapes.cli shapes --out $(SHARDS) --n $(N) --size $(SIZE) --max-objects $(MAX_OBJECTS) \
		--object-size $(OBJECT_SIZE) --seed $(SEED) --workers $(WORKERS) $(ARGS)

score-shards: $(SETUP)
	$(PY) -m data_prep.score_shards input=$(SHARDS) output=$(SCORED) rewards=$(REWARDS) $(ARGS)

fit-bins: $(SETUP)
	$(PY) -m data_prep.fit_bins input=$(SCORED) out=$(BINS) n_bins=$(N_BINS) $(ARGS)

# A synthetic caption per sample (KEY.syn.txt) from a vision-language model (conf/caption_shards.yaml),
# before scoring: make caption-shards DEMO_DIR=/data/cc12m ARGS="device=cuda", then score SHARDS=.../captioned
caption-shards: setup
	$(PY) -m data_prep.caption_shards input=$(SHARDS) output=$(DEMO_DIR)/captioned $(ARGS)

# The cc12m recipe's latents and FLAN-T5 features, next to the scored shards (docs/cc12m.md), e.g.
#   make cache-latents DEMO_DIR=/data/cc12m ARGS="device=cuda text_encoder.dtype=bfloat16"
cache-latents: setup
	$(PY) -m data_prep.cache_latents input=$(SCORED) output=$(DEMO_DIR)/cached $(ARGS)

train: $(SETUP)
	$(PY) -m miro.train +experiment=$(EXPERIMENT) paths.data_dir=$(DEMO_DIR) paths.output_dir=$(RUN_DIR) \
		data.image_size=$(SIZE) trainer.max_steps=$(DEMO_STEPS) $(ARGS)

# The same prompts and seeds at every reward target high, then every target low.
samples: setup
	$(VENV)/bin/miro-generate --checkpoint $(RUN_DIR)/export --prompts-file $(PROMPTS) --n 4 \
		--rewards alignment=10,sharpness=10,colorfulness=10,compressibility=10 --out $(DEMO_DIR)/samples/high
	$(VENV)/bin/miro-generate --checkpoint $(RUN_DIR)/export --prompts-file $(PROMPTS) --n 4 \
		--rewards alignment=0,sharpness=0,colorfulness=0,compressibility=0 --out $(DEMO_DIR)/samples/low

eval: $(SETUP)
	$(PY) -m miro.cli.eval --checkpoint $(CHECKPOINT) --out $(EVAL_DIR) $(ARGS)

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

# GRPO on the demo's model (run make demo first): fine-tune on prompts disjoint from the evaluation's, evaluate the result
# with the demo's evaluation settings, and compare every reward before and after. RL_REWARD=alignment is
# the harder case: it did not rise on the 15-minute patch-4 model (docs/grpo.md).
RL_EXPERIMENT ?= rl_shapes_chunk
RL_DIR ?= $(DEMO_DIR)/rl/$(RL_EXPERIMENT)
RL_REWARD ?= sharpness

# GRPO alone (fine-tune CHECKPOINT, by default the demo's export, into RL_DIR): make grpo's first stage.
grpo-train: $(SETUP)
	$(PY) -m miro.rl +experiment=$(RL_EXPERIMENT) paths.data_dir=$(DEMO_DIR) paths.output_dir=$(RL_DIR) \
		pretrained=$(CHECKPOINT) module.rewards=$(RL_REWARD) $(ARGS)

grpo: setup
	$(MAKE) --no-print-directory grpo-train
	test -f $(DEMO_DIR)/eval/results.json || $(MAKE) --no-print-directory eval ARGS=
	$(VENV)/bin/miro-eval --checkpoint $(RL_DIR)/export --out $(RL_DIR)/eval
	$(VENV)/bin/miro-eval compare $(DEMO_DIR)/eval $(RL_DIR)/eval --optimised $(RL_REWARD) --out $(RL_DIR)/compare

# The GRPO study of docs/grpo.md (conf/grpo_study.yaml): step-level vs chunk-level GRPO with and without
# weighted chunk sampling from RUN_DIR's export, 3 seeds, all evaluated with the same miro-eval settings;
# writes $(GRPO_STUDY_DIR)/grpo_study.md (mean ± std over seeds). Resumable: run it again if interrupted.
GRPO_STUDY_DIR ?= $(RUN_DIR)/grpo_study

grpo-study: setup
	$(PY) -m miro.rl.study export=$(RUN_DIR)/export out_dir=$(GRPO_STUDY_DIR) $(ARGS)

# The evidence study (miro/shapes/study/, conf/report.yaml): docs/results.md from the saved runs under
# runs/evidence/<scale>; REPORT_RUN=1 first runs the missing ones through the stage targets above:
# make report REPORT_RUN=1 (CPU scale, resumable: 101 min measured on a 2-core AMX Xeon, bf16, two
# commands x 1 thread; 2-3x that on an AVX2-only CPU in fp32),
# make report REPORT_SCALE=gpu REPORT_RUN=1 on a GPU machine, REPORT_SCALE=test for a smoke run of a few
# minutes; ARGS=--dry-run lists the steps, ARGS=--pack packs what the report read into
# docs/results/runs-cpu.tar.gz (committed), which a fresh clone's make report unpacks and reports from.
REPORT_SCALE ?= cpu
REPORT_SEEDS ?=
REPORT_RUN ?=

report: setup
	$(PY) -m miro.shapes.study --scale $(REPORT_SCALE) $(if $(REPORT_SEEDS),--seeds $(REPORT_SEEDS)) \
		$(if $(REPORT_RUN),--run) $(ARGS)

bench: setup
	$(PY) bench/bench_scoring.py
	$(PY) bench/bench_train.py
	$(PY) bench/bench_generate.py

# On a CUDA machine: training/generation throughput and MFU of the DiT sizes next to the reference
# miro-t2i network (installed into .bench/, never into .venv: its import name is also `miro`).
.bench/miro_t2i/.installed:
	$(PY) -m pip install -q --no-deps --target .bench/miro_t2i miro-t2i==0.1.4
	touch $@

bench-gpu: setup .bench/miro_t2i/.installed
	$(PY) bench/bench_train_gpu.py --reference-dir .bench/miro_t2i $(ARGS)

clean-demo:
	rm -rf $(DEMO_DIR)

# Reward parity (docs/rewards.md): the original packages, each in its own pinned venv under PARITY_DIR
# (built once, nice'd), against MIRO's loaders on tiny random models; not part of make test.
PARITY_DIR ?= .parity

parity: setup
	PARITY_DIR=$(PARITY_DIR) PYTHON_BASE=$(PYTHON_BASE) nice -n 10 bash parity/setup_venvs.sh
	PYTHONPATH=$(CURDIR) OMP_NUM_THREADS=1 $(PY) -m parity.run --parity-dir $(PARITY_DIR) $(ARGS)
