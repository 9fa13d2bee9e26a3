# segnet: decoder ablation for U-Nets on TGS salt. `make` lists the targets.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# User knobs (all optional): make train DECODER=upsampling EPOCHS=3 DATA=data/tgs CONFIG=configs/tgs.yaml ARGS="train.batch_size=16"
DECODER ?=
EPOCHS ?=
DATA ?=
CONFIG ?=
ARGS ?=
RESUME ?=
RUN ?=
MODEL ?=
NAME ?= segnet-tgs
ALIAS ?= champion
IMAGES ?= data/synthetic/test/images
OUT ?= submission.csv
SEEDS ?=
JOBS ?=
PLAN ?=
SUMMARIZE ?=
BACKEND ?=
ADDRESS ?=
TTA ?=
QUICK ?=
LEVERS ?=
HOST ?= 127.0.0.1
PORT ?= 5000
VERBOSE ?=
# Test processes at once (pytest-xdist): `logical` = one per CPU, at most 4; 0 runs the suite in this process.
TEST_JOBS ?= logical
PYTEST := $(PY) -m pytest -q $(if $(filter 0,$(TEST_JOBS)),-p no:xdist,-n $(TEST_JOBS) --maxprocesses 4 --dist loadscope)

# Overrides assembled from the knobs above (empty knobs add nothing).
OVR := $(if $(DECODER),model.decoder=$(DECODER)) $(if $(EPOCHS),train.epochs=$(EPOCHS)) \
       $(if $(DATA),data.dir=$(DATA)) $(if $(RESUME),train.resume=true) $(ARGS)
CFG := $(if $(CONFIG),--config $(CONFIG))
# Which model evaluate and predict use: a run (RUN=) or a registered version (MODEL=models:/<name>@<alias>).
WHICH := $(if $(RUN),--run-id $(RUN)) $(if $(MODEL),--model $(MODEL))
# Where ablate's and cv's children run: BACKEND=ray (a Ray cluster; ADDRESS=auto|HOST:PORT|ray://HOST:10001 to join one).
RAY := $(if $(BACKEND),--backend $(BACKEND)) $(if $(ADDRESS),--address $(ADDRESS))

.PHONY: help install data test test-all gpu-check lint train shapes evaluate predict register ablate cv bench ui clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,ray]'
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install segnet with its dev tools and Ray (every target does this first)

data: $(STAMP) ## get the real TGS data with the Kaggle CLI if credentials exist, else explain how and generate data/synthetic
	$(PY) -m segnet data get

test: $(STAMP) ## run the fast test suite on tiny synthetic inputs, a test process per CPU (TEST_JOBS=0: one)
	$(PYTEST) --durations=20

test-all: $(STAMP) ## run every test, including the slow ones (real training, real data, stress tests of signals and Ray)
	$(PYTEST) -m ''

gpu-check: $(STAMP) ## the GPU check: mixed_float16 and XLA on every decoder and custom layer, MirroredStrategy, GPU throughput (skips without a GPU)
	$(PY) -m pytest -q -m gpu -rs -s tests/test_gpu.py

lint: $(STAMP) ## ruff over the package and the tests
	$(VENV)/bin/ruff check segnet tests

train: $(STAMP) ## train one model: DECODER= EPOCHS= DATA= CONFIG= RESUME=1 ARGS="key=value ..."
	$(PY) -m segnet train $(CFG) $(OVR)

shapes: $(STAMP) ## print per-stage shapes and the decoder's overlap pattern: DECODER= ARGS=
	$(PY) -m segnet shapes $(CFG) $(OVR)

evaluate: $(STAMP) ## recompute every metric of a run's best model: RUN=<run id> (or MODEL=models:/<name>@<alias>) DATA= ARGS=
	$(PY) -m segnet evaluate $(WHICH) $(OVR)

predict: $(STAMP) ## write a Kaggle submission: RUN=<run id> (or MODEL=models:/<name>@<alias>) IMAGES=<dir> OUT=submission.csv TTA=1
	$(PY) -m segnet predict $(WHICH) --images $(IMAGES) --out $(OUT) $(if $(TTA),--tta)

register: $(STAMP) ## register a run's logged model in the MLflow model registry: RUN=<run id> NAME=segnet-tgs ALIAS=champion
	$(PY) -m segnet register --run-id $(RUN) --name $(NAME) --alias '$(ALIAS)'

ablate: $(STAMP) ## train every decoder variant on the same split and seeds: SEEDS= EPOCHS= DATA= JOBS= ARGS= (BACKEND=ray ADDRESS=: a Ray cluster; PLAN=1, SUMMARIZE=<id>: other schedulers)
	$(if $(PLAN),@)$(PY) -m segnet ablate $(if $(SUMMARIZE),--summarize $(SUMMARIZE) $(ARGS),$(CFG) \
	  $(if $(SEEDS),--seeds $(SEEDS)) $(if $(JOBS),--jobs $(JOBS)) $(if $(PLAN),--plan) $(RAY) \
	  $(if $(EPOCHS),train.epochs=$(EPOCHS)) $(if $(DATA),data.dir=$(DATA)) $(ARGS))

cv: $(STAMP) ## k-fold cross-validation of one config, a child run per fold: DECODER= EPOCHS= DATA= CONFIG= JOBS= ARGS= (BACKEND=ray ADDRESS=: a Ray cluster; PLAN=1, SUMMARIZE=<id>: other schedulers)
	$(if $(PLAN),@)$(PY) -m segnet cv $(if $(SUMMARIZE),--summarize $(SUMMARIZE) $(ARGS),$(CFG) \
	  $(if $(JOBS),--jobs $(JOBS)) $(if $(PLAN),--plan) $(RAY) $(OVR))

bench: $(STAMP) ## speed, memory and FLOP/s of every decoder against the baseline Keras U-Net (QUICK=1 short, LEVERS=1 lever by lever)
	$(PY) -m segnet bench $(if $(QUICK),--quick) $(if $(LEVERS),--levers)

ui: $(STAMP) ## serve the MLflow UI for the embedded store on $(HOST):$(PORT) until Ctrl-C (VERBOSE=1: MLflow's log)
	$(PY) -m segnet ui --host $(HOST) --port $(PORT) $(if $(VERBOSE),--verbose)

clean: ## remove caches and generated data (keeps .venv, mlflow.db and data/tgs)
	rm -rf .pytest_cache .ruff_cache data/synthetic data/folds runs bench
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
