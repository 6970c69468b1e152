# make test: create .venv if missing, install splathead[dev] and the recipes' distribution
#   (recipes/: splathead_recipes with its JPEG extension), run the CPU test suite.
# make test-floor: the same suite in .venv-floor, holding every direct dependency at the lowest
#   version pyproject.toml allows (uv's lowest-direct resolution), torch/torchvision held at
#   .ci/floor-constraints.txt: the declared lower bounds are what this run tests.
# make demo: same set-up, then the laptop demo of the pretraining recipe.
# make docs: same set-up plus splathead[docs], then the documentation site into site/, strictly
#   (a warning fails the build).
PYTHON ?= python3.11
VENV ?= .venv
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?= -n 2

FLOOR_VENV ?= .venv-floor
FLOOR_CONSTRAINTS ?= .ci/floor-constraints.txt
UV_VERSION ?= 0.13.9

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.installed-docs
FLOOR_BIN := $(FLOOR_VENV)/bin
FLOOR_STAMP := $(FLOOR_VENV)/.installed

.PHONY: test test-floor demo docs install install-floor clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

RECIPES_SOURCES := recipes/pyproject.toml recipes/setup.py recipes/csrc/jpeg_region.c

$(STAMP): pyproject.toml $(RECIPES_SOURCES) | $(BIN)/python
	$(BIN)/pip install -q $(TORCH_PINS)
	$(BIN)/pip install -q -e ".[dev]" -e "./recipes[video]"
	touch $(STAMP)

# torch/torchvision come through pip first (it finds local wheels; uv would download CUDA builds).
# uv then resolves every direct dependency to its lowest allowed version (--upgrade: replace what
# torchvision pulled in, e.g. pillow) and keeps the installed torch, which the constraints pin.
$(FLOOR_STAMP): pyproject.toml $(RECIPES_SOURCES) $(FLOOR_CONSTRAINTS)
	rm -rf $(FLOOR_VENV)
	$(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_BIN)/pip install -q --upgrade pip
	$(FLOOR_BIN)/pip install -q -r $(FLOOR_CONSTRAINTS) uv==$(UV_VERSION)
	$(FLOOR_BIN)/uv pip install -q --python $(FLOOR_BIN)/python --resolution lowest-direct \
		--upgrade -c $(FLOOR_CONSTRAINTS) -e ".[dev]" -e "./recipes[video]"
	touch $(FLOOR_STAMP)

$(DOCS_STAMP): $(STAMP)
	$(BIN)/pip install -q -e ".[docs]"
	touch $(DOCS_STAMP)

install: $(STAMP)

install-floor: $(FLOOR_STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-floor: $(FLOOR_STAMP)
	$(FLOOR_BIN)/pip list --format freeze
	$(FLOOR_BIN)/python -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/python recipes/gmae_imagenet.py --preset demo

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) $(FLOOR_VENV) runs site .pytest_cache .hypothesis
