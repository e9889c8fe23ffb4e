# The two commands that do everything on a fresh machine: `make demo`, `make test`.
PYTHON ?= python3.10
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

DEMO_DATA ?= demo/data
DEMO_OUT ?= demo/out
DEMO_SLIDES ?= 150
DEMO_SEED ?= 0

# Transform and TFMA need Keras 2 (tf_keras).
export TF_USE_LEGACY_KERAS := 1
export PYTHONWARNINGS := ignore::FutureWarning

.PHONY: install demo test clean

$(INSTALLED): setup.py pyproject.toml requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c requirements/constraints.txt -e '.[test]'
	touch $@

install: $(INSTALLED)

$(DEMO_DATA)/train.csv: $(INSTALLED)
	$(BIN)/histopipe synth --out $(DEMO_DATA) --slides $(DEMO_SLIDES) --seed $(DEMO_SEED)

# Runs again on the same output reuse every unchanged step (see docs/rerunning.md);
# `make clean demo` starts from scratch.
demo: $(DEMO_DATA)/train.csv
	$(BIN)/histopipe run --data $(DEMO_DATA) --out $(DEMO_OUT) --preset demo
	$(BIN)/histopipe report --run $(DEMO_OUT)

test: $(INSTALLED)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) demo .pytest_cache
