# The two set-up commands are `make run` and `make test`; everything else is a convenience.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: install install-test run test unit integration e2e lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e .
	touch $@

$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(STAMP)

install-test: $(TEST_STAMP)

run: install
	$(BIN)/medparse run

test: install-test
	$(BIN)/pytest

unit: install-test
	$(BIN)/pytest tests/unit

integration: install-test
	$(BIN)/pytest tests/integration

e2e: install-test
	$(BIN)/pytest tests/e2e

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/mypy medparse gateway workers db emulator

bench: install-test
	-$(BIN)/python bench/worker.py
	-$(BIN)/python bench/accept.py
	-$(BIN)/python bench/latency.py
	-$(BIN)/python bench/utilisation.py
	-$(BIN)/python bench/fairness.py
	-$(BIN)/python bench/soak.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
