# The one place for the project's commands. README's two set-up commands are `make demo` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
CONSTRAINTS := requirements/constraints.txt

.PHONY: setup demo test lint format

setup: $(VENV)/.installed

# One environment for everything on CPU (numpy<2 for the python backend; torch pinned to the CPU build).
$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c $(CONSTRAINTS) -e '.[all]'
	touch $@

# Main job: export the tiny models, start Triton on the repository, run the graphs through it.
demo: setup
	$(BIN)/python -m mtasr.demo

test: setup
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .
