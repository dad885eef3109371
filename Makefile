# Both targets create .venv when it is missing and reuse it afterwards.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml constraints.txt scripts/install-web-deps.sh
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,all]'
	bash scripts/install-web-deps.sh
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/edgeforge demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check src tests bench

test: lint
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) edgeforge-demo
