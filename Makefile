# The two commands that do everything on a fresh machine: `make demo` and `make test`.
# Both install the exact versions in requirements.lock (with hashes), so they give the same result next month;
# pyproject.toml keeps ranges for people who `pip install ftune` into their own environment.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements.lock
UV := $(BIN)/uv
UV_VERSION := 0.13.9
# Where torch's CPU wheel lies on this project's machines (the lock pins torch==2.13.0+cpu, which PyPI lacks).
FIND_LINKS ?= /opt/wheels
# Two workers for two cores; each worker's torch gets one thread (tests/conftest.py), so they don't oversubscribe.
WORKERS ?= 2
# Offline: no test reaches the model hub. Bytecode is written (some shells set PYTHONDONTWRITEBYTECODE): each ftune
# process a test starts imports torch, transformers and peft again, about twice as slowly from source.
RUN_TESTS := env -u PYTHONDONTWRITEBYTECODE HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -n $(WORKERS)

.PHONY: demo test test-quick docs setup lock check-newest clean chromium

$(STAMP): $(LOCK) pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(UV) pip install --quiet --python $(BIN)/python --require-hashes --compile-bytecode --find-links $(FIND_LINKS) -r $(LOCK)
	$(UV) pip install --quiet --python $(BIN)/python --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)  ## fine-tune the default model on the built-in `mr` dataset, print the before/after table
	$(BIN)/ftune train configs/mr_full.yaml --output-dir runs/demo-$$(date +%Y%m%d-%H%M%S)

test: $(STAMP) chromium  ## the whole test suite, in parallel, including one real fine-tuning smoke test
	$(RUN_TESTS)

test-quick: $(STAMP)  ## the day-to-day tier: everything but the tests marked slow or e2e (under 2 minutes)
	$(RUN_TESTS) -m "not slow and not e2e"

docs: $(STAMP)  ## serve the documentation site (MkDocs + Material, docs/ and mkdocs.yml) on 127.0.0.1:8000, live-reloaded
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

lock: $(STAMP)  ## refresh requirements.lock to the newest versions pyproject.toml allows (then run make test)
	UV=$(UV) FIND_LINKS=$(FIND_LINKS) bash scripts/deps.sh lock

check-newest: $(STAMP)  ## the suite against the newest releases pyproject.toml allows (.venv-newest); what changed
	UV=$(UV) FIND_LINKS=$(FIND_LINKS) WORKERS=$(WORKERS) bash scripts/deps.sh check-newest

# The report test opens report.html in headless Chromium. Install Debian's package when we can (root + apt);
# otherwise that one test skips and says why.
chromium:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get install -y -qq chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null 2>&1; }; }; } || \
	  echo "chromium not installed: the report's browser test will skip"

clean:
	rm -rf $(VENV) .venv-newest runs mlruns .pytest_cache
