# The README's two commands are `make demo` and `make test`; both set everything up first.
#
# Installs are reproducible: requirements.lock pins every package (a pip constraints file) to
# the versions CI last passed with; `make test-latest` tries the newest releases instead (the
# scheduled drift check) and `make lock` rewrites the lock from them once they pass.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
LOCK := requirements.lock
PIP_VERSION := 26.3
# the CPU build of torch first: a bare `torch` requirement would pull a multi-GB CUDA build
TORCH ?= torch==2.13.0
LATEST := .venv-latest
SRC := src tasks flows tests benchmarks deployments data_contracts
SHELL := /bin/bash
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: setup demo test test-system system-deps lint test-latest lock clean

$(STAMP): pyproject.toml $(LOCK)
	python3 -m venv $(VENV)
	$(PY) -m pip install -q pip==$(PIP_VERSION)
	$(PY) -m pip install -q -c $(LOCK) $(TORCH)
	$(PY) -m pip install -q -c $(LOCK) -e '.[dev]'
	$(PY) -c "import prefect.server.api.server, rdkit, torch"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fedchem demo $(ARGS)

# the fast suite: the library, the flows on an ephemeral Prefect, the HTTP service
test: $(STAMP)
	$(PY) -m pytest -m "not system" $(ARGS)

# the multi-process stack (Prefect server, workers, S3, PostgreSQL), fault injection, the page
# in a real Chromium and the wheel in a fresh venv; .ci/run runs it after `make test`
test-system: $(STAMP) system-deps
	$(PY) -m pytest -m system $(ARGS)

# Debian's Chromium + ChromeDriver (the page's browser test) and PostgreSQL (the stack's
# --postgres), installed when missing (as root)
system-deps:
	@need=""; \
	command -v chromium >/dev/null || need="$$need chromium"; \
	command -v chromedriver >/dev/null || need="$$need chromium-driver"; \
	ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need="$$need postgresql"; \
	if [ -n "$$need" ]; then \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -qq && apt-get install -y -qq $$need; \
	fi

# import-linter reads a package's directory; installed, flows/, tasks/, deployments/ and
# data_contracts/ live under fedchem/, so it reads a tree of links in that layout
lint: $(STAMP)
	$(VENV)/bin/ruff check $(SRC)
	$(VENV)/bin/ruff format --check $(SRC)
	$(VENV)/bin/mypy
	rm -rf build/imports && mkdir -p build/imports
	cp -rs $(CURDIR)/src/fedchem build/imports/fedchem
	for d in flows tasks deployments data_contracts; do cp -rs $(CURDIR)/$$d build/imports/fedchem/$$d; done
	PYTHONPATH=build/imports $(VENV)/bin/lint-imports --no-cache

# the drift check: a fresh venv with the newest release of every dependency (torch stays the
# CPU build, $(TORCH)), then the fast suite; what differs from the lock is printed first
test-latest:
	rm -rf $(LATEST)
	python3 -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q --upgrade pip
	$(LATEST)/bin/python -m pip install -q $(TORCH)
	$(LATEST)/bin/python -c "import torch; print('torch==' + torch.__version__)" > $(LATEST)/torch.txt
	$(LATEST)/bin/python -m pip install -q --upgrade --upgrade-strategy eager \
		-c $(LATEST)/torch.txt -e '.[dev]'
	$(LATEST)/bin/python -m pip freeze --exclude-editable | sort -f > $(LATEST)/freeze.txt
	@echo "newer than $(LOCK):"; diff <(sort -f $(LOCK) | grep -v '^#') $(LATEST)/freeze.txt | grep '^>' || echo "  nothing"
	$(LATEST)/bin/python -m pytest -m "not system" -p no:cacheprovider $(ARGS)

# after `make test-latest` passed: the lock becomes what it installed
lock:
	test -f $(LATEST)/freeze.txt || { echo "run make test-latest first"; exit 1; }
	{ echo "# pip constraints: the versions \`make test\` and CI install (make lock rewrites it)"; \
	  cat $(LATEST)/freeze.txt; } > $(LOCK)

clean:
	rm -rf $(VENV) $(LATEST) fedchem-demo fedchem-validation
