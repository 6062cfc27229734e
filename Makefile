# tierwise: the Makefile is the door. Every target builds the venv it needs (a stamp file), so
# `make train` and `make test` work on a fresh machine with only Python 3.11. Targets use tierwise's own
# defaults (per-user store and cache dirs, see `tierwise settings`), so `make train` followed by
# `tierwise route "..."` from any directory finds the champion.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# Two stamps: `make train`, `serve` and `setup` need the train extra only; tests, linters and benchmarks add the
# dev extra (LiteLLM, Dask, Playwright, schemathesis, mypy, ...) on top of it.
TRAIN_STAMP := $(VENV)/.stamp-train
STAMP := $(VENV)/.stamp-dev
UI_STAMP := $(VENV)/.stamp-ui
SERVE_VENV := .venv-serve
TIERWISE_DATA_DIR ?= ../shared/data
# Where torch 2.13.0 comes from: pip's default (here, a local CPU wheel); elsewhere give the CPU index, because
# PyPI's Linux wheel is the multi-GB CUDA build: make TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu train
TORCH_INDEX_URL ?=
DATA := data/routerbench_subset/outcomes.parquet
# The tests' and benchmarks' copy of the ONNX embedder (they read it from the checkout).
TEST_ONNX := .cache/onnx/minilm-int8.onnx

.PHONY: setup serve-install data train evaluate serve mlflow-ui test test-fast browser wrk lint bench bench-int8 clean

# scripts/venv_install.py installs with uv (pip's indexes and constraints passed on), else with pip.
$(TRAIN_STAMP): pyproject.toml scripts/venv_install.py
	$(PYTHON) -m venv $(VENV)
	$(if $(TORCH_INDEX_URL),$(BIN)/pip install -q torch==2.13.0 --index-url $(TORCH_INDEX_URL))
	$(BIN)/python scripts/venv_install.py torch==2.13.0 -e ".[train]"
	$(BIN)/python -m compileall -q -j 0 router training serving infra integrations  # as the installer does
	touch $@

$(STAMP): $(TRAIN_STAMP)
	$(BIN)/python scripts/venv_install.py -e ".[dev]"
	touch $@

$(UI_STAMP): $(TRAIN_STAMP)
	$(BIN)/python scripts/venv_install.py -e ".[ui]"
	touch $@

$(TEST_ONNX): $(STAMP) training/onnx_export.py router/embedders/onnx.py training/distill_static.py router/embedders/static.py
	$(BIN)/tierwise build-embedder
	mkdir -p .cache/onnx && cp -p "$$($(BIN)/tierwise settings cache_dir)"/onnx/* .cache/onnx/ && touch $@

$(DATA): | $(TRAIN_STAMP)
	$(BIN)/tierwise data --source $(TIERWISE_DATA_DIR)

setup: $(TRAIN_STAMP)  ## venv with the train extra; ONNX embedder (fp32 + int8) in the per-user cache
	$(BIN)/tierwise build-embedder

serve-install:  ## a serving-only venv (.venv-serve): core dependencies, no torch; needs the ONNX files built
	$(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/python scripts/venv_install.py .

data: $(TRAIN_STAMP)  ## copy the staged outcome logs into data/ (or download RouterBench)
	$(BIN)/tierwise data --source $(TIERWISE_DATA_DIR)

train: setup $(DATA)  ## train, evaluate, log to MLflow, register; prints the cost–quality table
	$(BIN)/tierwise train

evaluate: setup $(DATA)  ## evaluate the champion on the held-out split
	$(BIN)/tierwise evaluate

serve: setup  ## the routing service on 127.0.0.1:8000 (after make train)
	$(BIN)/python -m serving

mlflow-ui: $(UI_STAMP)  ## MLflow UI on 127.0.0.1:5000
	mkdir -p "$$($(BIN)/tierwise settings store_dir)"
	$(BIN)/mlflow ui --backend-store-uri "$$($(BIN)/tierwise settings mlflow_tracking_uri)" --host 127.0.0.1 --port 5000

test: setup $(DATA) $(TEST_ONNX) browser  ## unit, integration and quality tests (they never touch your stores)
	$(BIN)/python -m pytest -q --durations=25 -n 2

browser:  ## Debian's chromium for the browser tests (they skip with a reason where it can't be installed)
	@test -x /usr/bin/chromium || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null); } || \
	  echo "chromium not installed: the browser tests will skip"

test-fast: $(STAMP)  ## unit tests only
	$(BIN)/python -m pytest -q tests/unit

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy router
	$(BIN)/mypy serving training infra scripts

bench: setup $(DATA) $(TEST_ONNX) wrk  ## benchmarks: JSON under bench/results/
	$(BIN)/python -m bench.run_all

wrk:  ## Debian's wrk, the HTTP load generator the service benchmarks judge their ratios with
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null); } || \
	  echo "wrk not installed: the service benchmarks will use their own load generator and not judge their ratios"

bench-int8: setup $(DATA) $(TEST_ONNX)  ## how often int8 and torch features route alike (bench/results/int8_agreement.json)
	$(BIN)/python -m bench.int8_agreement

.PHONY: trust
trust: setup $(DATA) $(TEST_ONNX)  ## trust simulations (OPE; drift and guarantee where present): bench/results/trust_*.json, README table
	$(BIN)/python -m bench.trust_ope
	@for m in trust_drift trust_guarantee; do if [ -f bench/$$m.py ]; then $(BIN)/python -m bench.$$m || exit 1; fi; done
	$(BIN)/python -m bench.trust_readme --write

clean:  ## the venvs and the checkout's .cache; your stores (`tierwise settings store_dir`) are kept
	rm -rf $(VENV) $(SERVE_VENV) .cache

.PHONY: quality
quality: setup $(DATA) $(TEST_ONNX)  ## routing-quality suite on all three datasets, bootstrap CIs (bench/results/quality.md; 37 min on 2 shared cores)
	$(BIN)/python -m bench.quality

.PHONY: static-fit
static-fit: setup $(DATA) $(TEST_ONNX)  ## static embedder plain / fitted to the teacher vs int8 on every quality split (bench/results/static_fit/; ~15 min)
	$(BIN)/python -m bench.static_fit

.PHONY: container-smoke
container-smoke:  ## build the image and check a container serves MODEL_DIR=<a model dir> (docker/smoke.sh; needs a Docker engine)
	bash docker/smoke.sh

.PHONY: compose-smoke
compose-smoke: .venv/.stamp-dev $(DATA)  ## compose.yaml end to end: healthy, train from the host against its MLflow, serve, store (docker/compose_smoke.sh; needs Docker + compose v2)
	bash docker/compose_smoke.sh

.PHONY: readme-eval
readme-eval: setup $(DATA)  ## the README's evaluation table: evaluate the champion, write bench/results/evaluation.json, render it
	$(BIN)/tierwise evaluate --json-out bench/results/evaluation.json
	$(BIN)/python -m training.report --write
