# Two entry points for a new user: `make demo` and `make test`.
# Both create .venv when it is missing and install the package into it.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The tests also compile for TPU topologies, which needs libtpu (the [tpu]
# extra); the demo does not.
TEST_STAMP := $(VENV)/.installed-test
RUN_DIR ?= runs/demo
PYTEST_ARGS ?=

export JAX_PLATFORMS ?= cpu
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: install demo test test-fast clean-demo

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e ".[dev,tpu]"
	touch $(TEST_STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m sutra_jax.demo --run_dir=$(RUN_DIR)

test: $(TEST_STAMP)
	$(BIN)/python -m pytest -n 2 --durations=15 $(PYTEST_ARGS)

test-fast: $(TEST_STAMP)
	$(BIN)/python -m pytest -n 2 -m "not slow" $(PYTEST_ARGS)

clean-demo:
	rm -rf $(RUN_DIR)
