# Two commands on a fresh clone: `make demo` (the main job on its embedded default)
# and `make test`. Both create .venv and install the project on first use.
# On a GPU machine whose Python already has a CUDA torch: `make test-gpu VENV_ARGS=--system-site-packages`
# keeps that torch (setup.cfg accepts any torch >= 2.5) instead of downloading another.
VENV ?= .venv
VENV_ARGS ?=
PY := $(VENV)/bin/python

$(VENV)/.installed: setup.cfg pyproject.toml
	python3 -m venv $(VENV_ARGS) $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[dev]"
	touch $@

.PHONY: install demo test test-gpu
install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) -m sam3_lora.train experiment=quickstart

test: $(VENV)/.installed
	$(PY) -m pytest

# The `cuda` tests alone (skipped without a GPU), verbose, with the full-size runs' peak memory.
# On a GPU machine `make test` runs them too, inside the whole suite.
test-gpu: $(VENV)/.installed
	$(PY) -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'test-gpu: no CUDA GPU visible to torch')"
	$(PY) -m pytest -m cuda -v
