# The two commands of the README:
#   make book   — set up .venv, execute every chapter at the smoke profile, build _build/html
#   make test   — set up .venv, run ruff and the whole pytest suite (package + notebooks)
# Both create the virtual environment on first use (Python 3.10+ with venv and pip needed).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.ibbook-installed
IBCORE_DATA ?= data
export IBCORE_DATA := $(abspath $(IBCORE_DATA))
# Smoke runs are many small tensor ops: one thread per process avoids the thread hand-off cost
# that dominates them on a 2-core machine (25-45x in our measurements under load).
export OMP_NUM_THREADS ?= 1

.PHONY: book test setup clean
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip >/dev/null
	$(BIN)/pip install -r requirements.txt
	$(BIN)/pip install --no-deps -e .
	$(BIN)/python -m ipykernel install --prefix $(VENV) --name python3 >/dev/null
	touch $@

book: $(STAMP)
	rm -rf _build/html _build/.doctrees _build/jupyter_execute
	IBBOOK_STATIC=1 $(BIN)/jupyter-book build . --warningiserror --keep-going
	@echo "book: open _build/html/index.html"

test: $(STAMP)
	$(BIN)/ruff check ibcore tests benchmarks tools
	$(BIN)/pytest

clean:
	rm -rf _build .pytest_cache
