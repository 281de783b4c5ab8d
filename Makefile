# `make demo` builds the demo model if absent and serves it; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test protos bench bench-scale clean

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

# Latency on the demo model, then the serving load suite (workers 1 and 2; closed loop at
# 1/4/16/64 in flight, open loop at 500 requests/s) -> benchmarks/results/serve_load.json
bench: install
	$(BIN)/python benchmarks/latency.py
	$(BIN)/python benchmarks/serve_load.py --rate 500

# The scale suite in one command: train the three synthetic sizes (small 10K x 5K x 200K,
# medium 200K x 100K x 5M, large 1M x 1M x 20M; data generated if absent) and measure training
# time, peak memory, bundle size, load time and ANN recall (-> benchmarks/results/train_scale.json),
# then serve each bundle with 3 asyncio workers under closed- and open-loop gRPC load from a
# separate load-generator process, each followed by the no-op server (gRPC alone) under the same
# load (-> benchmarks/results/serve_load_scale.json).
bench-scale: install
	$(BIN)/python benchmarks/train_scale.py --sizes small,medium,large
	$(BIN)/python benchmarks/serve_load.py --sizes small medium large --workers 3 \
		--server-arg=--io --server-arg=asyncio --channels 64 --concurrency 1 16 32 \
		--rate 500 800 1000 --rate-duration 60 --noop --json benchmarks/results/serve_load_scale.json

clean:
	rm -rf $(VENV) .hybridrec .pytest_cache build *.egg-info
