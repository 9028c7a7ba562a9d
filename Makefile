# The one place for the project's commands. README's two set-up commands are `make demo` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
CONSTRAINTS := requirements/constraints.txt

.PHONY: setup system-deps demo test lint format

setup: $(VENV)/.installed

# One environment for everything on CPU (numpy<2 for the python backend; torch pinned to the CPU build).
$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c $(CONSTRAINTS) -e '.[all]'
	touch $@

# Debian packages: espeak-ng speaks the test audio (installed when running as root, as CI does).
system-deps:
	@command -v espeak-ng >/dev/null || { if [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null; \
	else echo "note: install espeak-ng (apt-get install espeak-ng) to run the synthesised-speech tests"; fi; }

# Main job: export models, start Triton, stream a conversation, print per-speaker transcripts.
demo: setup system-deps
	$(BIN)/python -m mtasr.demo

test: setup system-deps
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .
