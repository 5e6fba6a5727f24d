# gleanpipe: every target installs what it needs into .venv first.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: run test bench clean bqemu deploy undeploy chromium gleanjs emulate constraints

# Python 3.11 or newer (pyproject's requires-python): asked first, so an older python3 (Ubuntu
# 22.04 has 3.10) gets this line instead of pip failing to resolve the pinned versions.
# One that is there but does not run (pyenv's shim for a version pyenv has not made active says
# "pyenv: python3.13: command not found" and exits 127) is quoted, not taken for its version.
PYTHON_CHECK = @$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
	if ! command -v $(PYTHON) >/dev/null; then \
	  echo "gleanpipe needs Python 3.11 or newer, and '$(PYTHON)' is not found." \
	       "Give make a newer one: make $(or $(MAKECMDGOALS),run) PYTHON=python3.12" >&2; \
	elif said=$$($(PYTHON) --version 2>&1); then \
	  echo "gleanpipe needs Python 3.11 or newer, and '$(PYTHON)' is $$said." \
	       "Give make a newer one: make $(or $(MAKECMDGOALS),run) PYTHON=python3.12" >&2; \
	else \
	  echo "gleanpipe needs Python 3.11 or newer, and '$(PYTHON)' does not run (exit status $$?); it says:" >&2; \
	  printf '%s\n' "$$said" | sed '/./s/^/    /' >&2; \
	  echo "Give make one that runs: make $(or $(MAKECMDGOALS),run) PYTHON=python3.12" >&2; \
	fi; exit 1; }

# The versions in constraints.txt: the ones the tests last passed with (a new release of a
# dependency cannot turn a fresh clone red). `make constraints` moves them on.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON_CHECK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

## run: start the whole pipeline locally (http://127.0.0.1:8080, data in ./data)
run: $(STAMP)
	$(VENV)/bin/gleanpipe serve

## bqemu: the BigQuery emulator in its own venv (.venv-bqemu), used by the BigQuery tests
BQEMU       ?= .venv-bqemu
BQEMU_STAMP  = $(BQEMU)/.installed
$(BQEMU_STAMP): tests/bqemu/requirements.txt tests/bqemu/constraints.txt tests/bqemu/install_spatial.py
	$(PYTHON_CHECK)
	$(PYTHON) -m venv $(BQEMU)
	$(BQEMU)/bin/python -m pip install --quiet -c tests/bqemu/constraints.txt -r tests/bqemu/requirements.txt
	$(BQEMU)/bin/python tests/bqemu/install_spatial.py
	touch $(BQEMU_STAMP)
bqemu: $(BQEMU_STAMP)

## test: the full test suite against real components, in TEST_PROCESSES processes (pytest-xdist)
TEST_PROCESSES ?= 2
test: $(STAMP) $(BQEMU_STAMP) chromium gleanjs
	$(PY) -m pytest -n $(TEST_PROCESSES)

## chromium: Debian's Chromium for the browser tests (skipped, with a note, where it cannot be installed)
chromium:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } || \
		echo "chromium is not installed: the browser tests will be skipped"

## gleanjs: the real Glean.js (the versions in tests/gleanjs/package-lock.json) bundled for its browser test (skipped, with a note, without npm or the npm registry)
GLEANJS        = build/gleanjs
GLEANJS_BUNDLE = $(GLEANJS)/page.bundle.js
# offline, npm gives up in about half a minute (its defaults: up to 5 minutes a request, retried after 10 and 60 s)
GLEANJS_NPM_NET = --fetch-timeout=10000 --fetch-retries=2 --fetch-retry-mintimeout=1000 --fetch-retry-maxtimeout=4000
GLEANJS_SKIP   = echo "Glean.js could not be installed ($$why): the Glean.js browser test will be skipped"
gleanjs: $(GLEANJS_BUNDLE)
$(GLEANJS_BUNDLE): $(STAMP) $(wildcard tests/gleanjs/*)
	@command -v npm >/dev/null || { why="npm is not installed"; $(GLEANJS_SKIP); exit 0; }; \
	rm -rf $(GLEANJS) && mkdir -p $(GLEANJS) && \
	cp tests/gleanjs/package.json tests/gleanjs/package-lock.json tests/gleanjs/page.js $(GLEANJS)/ && \
	{ (cd $(GLEANJS) && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error $(GLEANJS_NPM_NET)) || \
	  { why="npm ci failed: offline?"; $(GLEANJS_SKIP); rm -rf $(GLEANJS); exit 0; }; } && \
	{ out=$$($(VENV)/bin/glean_parser translate --format javascript --output $(GLEANJS)/generated \
		tests/gleanjs/metrics.yaml tests/gleanjs/pings.yaml 2>&1) || { echo "$$out" >&2; exit 1; }; } && \
	$(GLEANJS)/node_modules/.bin/esbuild $(GLEANJS)/page.js --bundle --format=iife --log-level=warning \
		--outfile=$@.tmp && mv $@.tmp $@

## emulate: the Google Cloud shape on this machine (fake GCS -> Pub/Sub push -> load -> bqemulator); Ctrl-C stops it
emulate: $(STAMP) $(BQEMU_STAMP)
	$(VENV)/bin/gleanpipe emulate

## bench: throughput and latency figures (see BENCHMARKS.md)
bench: $(STAMP)
	$(PY) bench/run.py

## deploy: deploy to Google Cloud (settings: GLEANPIPE_DEPLOY_* or SETTINGS=FILE); DRY_RUN=1 only prints
DEPLOY_BUILD_DIR ?= build/deploy
DEPLOY_ARGS = $(if $(filter-out 0,$(DRY_RUN)),--dry-run) $(if $(SETTINGS),--settings $(SETTINGS)) --build-dir $(DEPLOY_BUILD_DIR)
deploy: $(STAMP)
	$(PY) infra/deploy.py deploy $(DEPLOY_ARGS)

## undeploy: remove the functions, grants and service accounts (keeps bucket and datasets)
undeploy: $(STAMP)
	$(PY) infra/deploy.py undeploy $(DEPLOY_ARGS)

## constraints: re-pin constraints.txt (and the emulator's) to the newest releases allowed (then `make test`)
constraints:
	$(PYTHON_CHECK)
	rm -rf build/constraints-venv
	$(PYTHON) -m venv build/constraints-venv
	build/constraints-venv/bin/python -m pip install --quiet --upgrade pip
	build/constraints-venv/bin/python -m pip install --quiet -e '.[test]'
	{ sed -n '/^#/p' constraints.txt; build/constraints-venv/bin/python -m pip freeze --exclude-editable; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf build/constraints-venv
	$(PYTHON) -m venv build/constraints-venv
	build/constraints-venv/bin/python -m pip install --quiet -r tests/bqemu/requirements.txt
	{ sed -n '/^#/p' tests/bqemu/constraints.txt; build/constraints-venv/bin/python -m pip freeze; } > tests/bqemu/constraints.txt.new
	mv tests/bqemu/constraints.txt.new tests/bqemu/constraints.txt
	rm -rf build/constraints-venv

clean:
	rm -rf $(VENV) $(BQEMU) $(GLEANJS) data .pytest_cache test-artifacts
