# The README's two commands are `make demo` and `make test`; both set everything up first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: setup demo test lint clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the CPU build of torch first: a bare `torch` requirement would pull a multi-GB CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -c "import prefect.server.api.server, rdkit, torch"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fedchem demo $(ARGS)

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check src tasks flows tests benchmarks deployments data_contracts
	$(VENV)/bin/ruff format --check src tasks flows tests benchmarks deployments data_contracts
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) fedchem-demo fedchem-validation
