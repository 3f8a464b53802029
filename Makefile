# Every target installs what it needs into .venv first, so each works on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test check fmt bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/tidings up

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

check: $(STAMP)
	$(BIN)/ruff check shared services tests
	$(BIN)/ruff format --check shared services tests
	$(BIN)/mypy

fmt: $(STAMP)
	$(BIN)/ruff format shared services tests
	$(BIN)/ruff check --fix shared services tests

bench: $(STAMP)
	$(BIN)/tidings bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
