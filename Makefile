# Two entry points, each doing all set-up from a fresh clone:
#   make run   -> set up .venv, then run the main job on its default config (it ends with its held-out table)
#   make test  -> set up .venv, then lint (ruff check, rules in pyproject.toml) and run the test suite
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
CONFIG  ?= configs/atari_leap.yaml
STAMP   := $(VENV)/.installed

.PHONY: setup run test clean

setup: $(STAMP)

# torch==2.13.0 first: it is the CPU build on this machine's disk; a bare `torch`
# requirement would otherwise pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/metarl train $(CONFIG)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) runs
