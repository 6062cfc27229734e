# tierwise: the Makefile is the door. Every target builds the venv it needs (a stamp file), so
# `make train` and `make test` work on a fresh machine with only Python 3.11.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.stamp-dev
UI_STAMP := $(VENV)/.stamp-ui
TIERWISE_DATA_DIR ?= ../shared/data
DATA := data/routerbench_subset/outcomes.parquet
ONNX := .cache/onnx/minilm-int8.onnx
MLFLOW_TRACKING_URI ?= sqlite:///mlflow.db
export MLFLOW_TRACKING_URI

.PHONY: setup data train evaluate serve mlflow-ui test test-fast lint bench bench-int8 clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

$(UI_STAMP): $(STAMP)
	$(BIN)/pip install -q -e ".[ui]"
	touch $@

$(ONNX): $(STAMP) training/onnx_export.py router/onnx_embedder.py
	$(BIN)/python -m training.onnx_export --out .cache/onnx && touch $@

$(DATA): | $(STAMP)
	$(BIN)/tierwise data --source $(TIERWISE_DATA_DIR)

setup: $(STAMP) $(ONNX)  ## venv, dependencies, ONNX embedder (fp32 + int8)

data: $(STAMP)  ## copy the staged outcome logs into data/ (or download RouterBench)
	$(BIN)/tierwise data --source $(TIERWISE_DATA_DIR)

train: setup $(DATA)  ## train, evaluate, log to MLflow, register; prints the cost–quality table
	$(BIN)/tierwise train

evaluate: setup $(DATA)  ## evaluate the champion on the held-out split
	$(BIN)/tierwise evaluate

serve: setup  ## the routing service on 127.0.0.1:8000 (after make train)
	$(BIN)/python -m serving

mlflow-ui: $(UI_STAMP)  ## MLflow UI on 127.0.0.1:5000
	$(BIN)/mlflow ui --backend-store-uri $(MLFLOW_TRACKING_URI) --host 127.0.0.1 --port 5000

test: setup $(DATA)  ## unit, integration and quality tests
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)  ## unit tests only
	$(BIN)/python -m pytest -q tests/unit

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy router
	$(BIN)/mypy serving training

bench: setup $(DATA)  ## benchmarks: JSON under bench/results/
	$(BIN)/python -m bench.run_all

bench-int8: setup $(DATA)  ## how often int8 and torch features route alike (bench/results/int8_agreement.json)
	$(BIN)/python -m bench.int8_agreement

clean:
	rm -rf $(VENV) .cache mlflow.db mlartifacts tierwise.db
