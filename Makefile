# nexus_lab — every target creates .venv and installs what it needs on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q
# Notebooks call `!nexus ...`: the kernel must find the venv's console script.
export PATH := $(CURDIR)/$(BIN):$(PATH)
NBVAL  := --nbval --nbval-current-env --nbval-sanitize-with notebooks/nbval-sanitize.cfg

.PHONY: demo test lab lint bench clean system-deps

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

# Runtime extras: enough for the demo (server + CLI + openai).
$(VENV)/.stamp-run: pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[server,cli,openai]'
	touch $@

# Everything the tests need (jupyter, redis client, nbval, playwright, ruff ...).
$(VENV)/.stamp-dev: pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[all]'
	touch $@ $(VENV)/.stamp-run

demo: $(VENV)/.stamp-run
	$(BIN)/nexus demo

system-deps:
	@bash scripts/system-deps.sh

test: $(VENV)/.stamp-dev system-deps
	$(BIN)/ruff check nexus_lab tests benchmarks examples
	$(BIN)/lint-imports
	$(BIN)/python -m pytest $(NBVAL) tests notebooks

lint: $(VENV)/.stamp-dev
	$(BIN)/ruff check nexus_lab tests benchmarks examples

bench: $(VENV)/.stamp-dev
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

lab: $(VENV)/.stamp-dev
	$(BIN)/jupyter lab --ip=127.0.0.1 --no-browser --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

clean:
	rm -rf $(VENV) .nexus .pytest_cache build *.egg-info
