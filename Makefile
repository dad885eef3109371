# Both targets create .venv when it is missing and reuse it afterwards.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint lock wheel-check corpus clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The web runtime's browser and onnxruntime-web come from `edgeforge setup web`; without npm (or
# root for the browser) it says what is missing and the web runtime reports itself unavailable.
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,all]'
	# The ONNX-to-torch bridge, without the torchvision its metadata asks for (README, Install).
	$(BIN)/python -m pip install --quiet --no-deps onnx2torch==1.5.15
	-$(BIN)/edgeforge setup web --install-browser
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/edgeforge demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check src tests bench scripts

test: lint
	$(BIN)/python -m pytest

# A wheel in fresh venvs, run from /tmp (minutes; writes bench/results/wheel_check.txt).
wheel-check: $(STAMP)
	bash scripts/check-wheel.sh

# The conversion corpus: 30 architectures to six runtimes (hours on a loaded 2-core machine; writes
# bench/results/conversion_corpus.json and prints the README's table). tests/ holds a slice.
corpus: $(STAMP)
	$(BIN)/python bench/conversion_corpus.py

# Re-resolve the full lock (constraints.txt) from pyproject.toml and constraints.in. Every version
# is pinned so that pip installs without backtracking (an open graph this size exceeds its depth).
lock: $(BIN)/python
	$(BIN)/python -m pip install --quiet uv
	$(BIN)/python -m uv pip compile --quiet --python $(BIN)/python \
	    --python-platform x86_64-manylinux_2_28 --find-links "$${PIP_FIND_LINKS:?set PIP_FIND_LINKS to where the torch 2.13.0+cpu wheel is}" \
	    -c constraints.in --extra dev --extra all pyproject.toml -o constraints.txt
	$(BIN)/python -m pip install --quiet --dry-run -c constraints.txt -e '.[dev,all]'

clean:
	rm -rf $(VENV) edgeforge-demo
