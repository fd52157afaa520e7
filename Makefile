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
	$(BIN)/mypy medparse gateway workers db emulator runtime
	$(BIN)/lint-imports

bench: install-test  # every bench runs; the exit status says whether any of them failed
	@status=0; for b in worker accept latency utilisation fairness soak; do \
		$(BIN)/python -m bench.$$b || status=1; done; exit $$status

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
