# gleanpipe: every target installs what it needs into .venv first.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: run test bench clean bqemu

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

## run: start the whole pipeline locally (http://127.0.0.1:8080, data in ./data)
run: $(STAMP)
	$(VENV)/bin/gleanpipe serve

## bqemu: the BigQuery emulator in its own venv (.venv-bqemu), used by the BigQuery tests
BQEMU       ?= .venv-bqemu
BQEMU_STAMP  = $(BQEMU)/.installed
$(BQEMU_STAMP): tests/bqemu/requirements.txt tests/bqemu/install_spatial.py
	$(PYTHON) -m venv $(BQEMU)
	$(BQEMU)/bin/python -m pip install --quiet -r tests/bqemu/requirements.txt
	$(BQEMU)/bin/python tests/bqemu/install_spatial.py
	touch $(BQEMU_STAMP)
bqemu: $(BQEMU_STAMP)

## test: the full test suite against real components
test: $(STAMP) $(BQEMU_STAMP)
	$(PY) -m pytest

## bench: throughput and latency figures (see BENCHMARKS.md)
bench: $(STAMP)
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) $(BQEMU) data .pytest_cache test-artifacts
