# `make demo` builds the demo model if absent and serves it; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test protos bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: install
	$(BIN)/hybridrec demo

test: install
	$(BIN)/python -m pytest -q

protos: install
	$(BIN)/python -m hybridrec.server.protogen

bench: install
	$(BIN)/python benchmarks/latency.py

clean:
	rm -rf $(VENV) .hybridrec .pytest_cache build *.egg-info
