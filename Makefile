# The two commands that do everything on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test setup clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned: the CPU build on disk here; a bare `torch` would pull a multi-GB CUDA build
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)  ## fine-tune the default model on the built-in `mr` dataset, print the before/after table
	$(BIN)/ftune train configs/mr_full.yaml --output-dir runs/demo-$$(date +%Y%m%d-%H%M%S)

test: $(STAMP)  ## the whole test suite, including one real fine-tuning smoke test
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs .pytest_cache
