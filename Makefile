# The two commands that do everything on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test setup clean chromium

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

test: $(STAMP) chromium  ## the whole test suite, including one real fine-tuning smoke test
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

# The report test opens report.html in headless Chromium. Install Debian's package when we can (root + apt);
# otherwise that one test skips and says why.
chromium:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get install -y -qq chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null 2>&1; }; }; } || \
	  echo "chromium not installed: the report's browser test will skip"

clean:
	rm -rf $(VENV) runs mlruns .pytest_cache
