# ZMirror — make targets. / 常用命令。
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# make run / make dev: the data directory, and the address to listen on (a Twisted endpoint such
# as tcp:8080:interface=127.0.0.1; empty: [server] host/port of the config, 0.0.0.0:8080)
DATA   ?= data
LISTEN ?=
# twistd's pid file goes into the data directory (a second instance with another DATA is not
# refused), the log to stdout
RUN_ARGS = --pidfile $(DATA)/twistd.pid --logfile - zmirror --data $(DATA) $(if $(LISTEN),--listen $(LISTEN))
WEBUI_STAMP := zmirror/webui/index.html
WEB_SOURCES := $(shell find web -path web/node_modules -prune -o -type f -print 2>/dev/null)

.PHONY: deps run dev ui build build-release test test-unit conformance fmt lint clean system-deps

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Python dependencies (editable install, test and dev extras), again when setup.py changed.
# The install puts the repository root on the venv's path (setup.py: package_dir), so the
# twistd plugin in twisted/plugins/ and the tests import from the working tree.
DEPS_STAMP := $(VENV)/.deps-installed
deps: $(DEPS_STAMP)
$(DEPS_STAMP): setup.py $(BIN)/python
	$(BIN)/pip install -q -e '.[test,dev]'
	@touch $@

# The web UI, rebuilt when web/ changed (needs node + npm)
ui: $(WEBUI_STAMP)
$(WEBUI_STAMP): $(WEB_SOURCES)
	@if [ -f web/package.json ]; then \
	  cd web && (npm ci --no-audit --no-fund || npm install --no-audit --no-fund) && npm run build; \
	else echo "web/ has no package.json yet: UI not built"; fi

# Run the service on its embedded defaults (creates ./data on first start);
# make run LISTEN=tcp:8080:interface=127.0.0.1 DATA=/srv/zmirror
run: deps ui
	$(BIN)/twistd -n $(RUN_ARGS)

# Like run, restarting when Python files change
dev: deps ui
	$(BIN)/hupper -m twisted -n $(RUN_ARGS)

build: deps ui
	$(BIN)/pip wheel -q --no-deps -w dist .

build-release: deps ui
	$(BIN)/pip install -q build
	$(BIN)/python -m build --sdist --wheel --outdir dist .

# System packages for the end-to-end tests (Debian; only as root, only what is missing)
system-deps:
	@bash scripts/system-deps.sh

test: deps system-deps ui
	$(BIN)/trial tests

test-unit: deps
	$(BIN)/trial tests --exclude-e2e 2>/dev/null || $(BIN)/trial tests

# The OCI distribution-spec conformance suite (Pull) through zmirror, on 127.0.0.1 (under a minute;
# needs the suite's scripts in ../shared/conformance or CONFORMANCE_DIR)
conformance: deps system-deps
	ZMIRROR_BIN=$(abspath $(BIN)) bash scripts/conformance.sh

fmt: deps
	$(BIN)/ruff format zmirror tests twisted bench
	$(BIN)/ruff check --fix zmirror tests twisted bench

lint: deps
	$(BIN)/ruff check zmirror tests twisted bench

clean:
	rm -rf build dist *.egg-info _trial_temp zmirror/webui
