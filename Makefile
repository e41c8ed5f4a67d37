# The two commands the README promises:
#   make run    install the runtime dependencies into .venv (again only when pyproject.toml
#               changes) and run service + gateway on configs/local.toml
#   make test   install everything the tests need and run the whole suite
# and the worked example, offline (a local registry, a base image built here,
# the service, an augmentation, a pull): make example
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test example install deps lint protos check-protos buf pytest clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Stamps: pip runs again only when pyproject.toml changed (the install is editable, so
# code changes need none). `run` needs the runtime dependencies only; everything the
# tests and linters need is `install`'s, which covers `run`'s too.
RUNTIME_STAMP := $(VENV)/.installed-runtime
TEST_STAMP := $(VENV)/.installed-test

$(RUNTIME_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@ $(RUNTIME_STAMP)

install: $(TEST_STAMP)

run: $(RUNTIME_STAMP)
	$(BIN)/wave-grpc serve --config configs/local.toml

example: install
	VENV=$(VENV) bash scripts/example.sh

deps:
	scripts/install-test-deps.sh

protos: install
	$(BIN)/python scripts/gen_protos.py

check-protos: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python scripts/gen_protos.py --check

buf: deps
	npx --no-install buf lint
	scripts/buf-breaking.sh

lint: install check-protos buf
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy wave_grpc gateway scripts tests bench
	$(BIN)/lint-imports --no-cache

pytest: install
	$(BIN)/python -m pytest -q -ra

test: deps install lint pytest

clean:
	rm -rf $(VENV) node_modules .wave-grpc
