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

# Debian packages (installed when running as root, as CI does): espeak-ng speaks the test audio;
# flite, festival and its kd voice speak the training corpus; sctk's md-eval.pl is NIST's DER
# scorer, which the DER tests check `mtasr score` against.
DEBIAN_PACKAGES := espeak-ng sctk flite festival festvox-kdlpc16k
system-deps:
	@{ command -v espeak-ng >/dev/null && command -v flite >/dev/null && test -d /usr/share/festival/voices/english/ked_diphone \
		&& test -f /usr/lib/sctk/bin/md-eval.pl; } || { if [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEBIAN_PACKAGES) >/dev/null; \
	else echo "note: install them to run every test: apt-get install $(DEBIAN_PACKAGES)"; fi; }

# Main job: export models, start Triton, stream a conversation, print per-speaker transcripts.
demo: setup system-deps
	$(BIN)/mtasr demo

test: setup system-deps
	$(BIN)/pytest -q --durations=15

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .
