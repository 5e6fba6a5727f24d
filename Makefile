# gleanpipe: every target installs what it needs into .venv first.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: run test bench clean browser

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

## run: start the whole pipeline locally (http://127.0.0.1:8080, data in ./data)
run: $(STAMP)
	$(VENV)/bin/gleanpipe serve

## test: the full test suite against real components
test: $(STAMP) browser
	$(PY) -m pytest

## browser: Debian's chromium for the dictionary's browser test (Playwright never downloads one)
SUDO = $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -qq >/dev/null && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }

## bench: throughput and latency figures (see BENCHMARKS.md)
bench: $(STAMP)
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) data .pytest_cache test-artifacts
