# Every target installs what it needs into .venv first, so each works on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test check fmt bench soak clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/tidings up

# The end-to-end core (the seeds' routes, resume, many viewers, kill -9 recovery) runs a second
# time on a local Valkey Cluster of 3 primaries and 3 replicas (TIDINGS_TEST_CLUSTER, see
# tests/conftest.py). `make test CLUSTER_CORE=` leaves that pass out.
CLUSTER_CORE ?= tests/test_compat_seeds.py tests/test_gateway_resume.py \
	tests/test_gateway_fanout.py tests/test_worker_recovery.py

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	if [ -n "$(strip $(CLUSTER_CORE))" ]; then \
		TIDINGS_TEST_CLUSTER=1 $(BIN)/python -m pytest $(CLUSTER_CORE); fi

# mypy cannot follow pyproject's package-dir (shared/ is `tidings`, services/ is
# `tidings.services`), so it reads the folders through links named as they are imported.
TYPECHECK := $(VENV)/typecheck/tidings

check: $(STAMP)
	$(BIN)/ruff check shared services tests
	$(BIN)/ruff format --check shared services tests
	rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)
	for f in shared/*; do ln -s "$(CURDIR)/$$f" $(TYPECHECK)/; done
	ln -s "$(CURDIR)/services" $(TYPECHECK)/services
	$(BIN)/mypy

fmt: $(STAMP)
	$(BIN)/ruff format shared services tests
	$(BIN)/ruff check --fix shared services tests

bench: $(STAMP)
	$(BIN)/tidings bench

# The long fault-and-abuse soak (a few minutes); `make test` runs the short one.
soak: $(STAMP)
	$(BIN)/python -m tidings.services.bench.soak --profile long $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
