# make test: create .venv if missing, install splathead[dev], run the CPU test suite.
# make demo: same set-up, then the laptop demo of the pretraining recipe.
PYTHON ?= python3.11
VENV ?= .venv
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?= -n 2

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q $(TORCH_PINS)
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/python recipes/gmae_imagenet.py --preset demo

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
