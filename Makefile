# Two commands on a fresh clone: `make demo` (the main job on its embedded default) and `make test`.
# Both create .venv and install the locked environment on first use: requirements.lock pins every
# package (torch included) to the versions the README's figures come from; setup.cfg keeps the loose
# ranges for installing sam3_lora into an environment of your own (`pip install -e .`).
VENV ?= .venv
VENV_ARGS ?=
PY := $(VENV)/bin/python
# The GPU check runs where the GPU is; on a machine without a package registry, with the offline kit
# sourced (`source .gpu-kit/setup.sh`), call it with that machine's Python: `make gpu-check PY=python3`.
GPU_OUT ?= gpu-check
GPU_BUDGET_S ?= 300
USES_VENV = $(if $(filter $(VENV)/bin/python,$(PY)),$(VENV)/.installed)

$(VENV)/.installed: requirements.lock setup.cfg pyproject.toml
	python3 -m venv $(VENV_ARGS) $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.lock
	$(PY) -m pip install --no-deps -e .
	touch $@

.PHONY: install demo test test-gpu gpu-check verify-toy-base lock benchmark-stand-in
install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) -m sam3_lora.train experiment=quickstart

test: $(VENV)/.installed
	$(PY) -m pytest

# The `cuda` tests alone (skipped without a GPU), verbose, with the full-size runs' peak memory.
# On a GPU machine `make test` runs them too, inside the whole suite.
test-gpu: $(USES_VENV)
	$(PY) -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'test-gpu: no CUDA GPU visible to torch')"
	$(PY) -m pytest -m cuda -v

# What a GPU machine must show, in priority order within a time budget: the cuda tests, the full
# model's benchmark, the quick start's wall time. Writes gpu_check.json and gpu_check.md to GPU_OUT.
gpu-check: $(USES_VENV)
	$(PY) tools/gpu_check.py --out $(GPU_OUT) --budget-s $(GPU_BUDGET_S)

# A benchmark experiment's whole chain on CPU, on a stand-in release (docs/benchmarks.md): the stand-in in
# the benchmark's own layout, prepare (published few-shot files, seeds 3 and 30), 2 datasets x 2 seeds x
# 2 setups as one multirun, the table (stand_in/odinw13/multirun/benchmark_table.md). About a minute.
STAND_IN ?= stand_in/odinw13
benchmark-stand-in: $(VENV)/.installed
	$(PY) -m sam3_lora.benchmark stand_in name=odinw13 root=$(STAND_IN)/release
	$(PY) -m sam3_lora.benchmark prepare name=odinw13 root=$(STAND_IN)/release out=$(STAND_IN)/prepared seeds=[3,30]
	$(PY) -m sam3_lora.train -m experiment=odinw13_10shot debug=benchmark_stand_in benchmark.prepared=$(STAND_IN)/prepared \
	  benchmark.dataset=Aquarium,pistols seed=3,30 hydra.sweep.dir=$(STAND_IN)/multirun

# Outside CI (about 10 minutes on 2 CPU cores): pretrain the toy base again with the shipped recipe and
# compare it with the shipped weights (sam3_lora/pipeline/assets/).
verify-toy-base: $(VENV)/.installed
	$(PY) tools/toy_base.py verify

# Re-resolve requirements.lock from setup.cfg (needs pip-tools), keeping the torch build the figures use.
lock:
	pip-compile --quiet --extra dev --strip-extras --no-emit-index-url --no-emit-find-links \
	  -P torch==2.14.1 -P torchvision==0.29.1 --output-file requirements.lock setup.cfg
