# Two commands on a fresh clone: `make demo` (the main job on its embedded default)
# and `make test`. Both create .venv and install the project on first use.
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[dev]"
	touch $@

.PHONY: install demo test
install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) -m sam3_lora.train experiment=quickstart

test: $(VENV)/.installed
	$(PY) -m pytest
