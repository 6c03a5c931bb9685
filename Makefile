# exo-gpu developer commands. `make test` is what CI runs (.ci/run); it installs everything it
# needs into .venv and builds the control-plane binaries into the cache when they are missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: help install binaries image test unit integration chaos lint bench crds cluster cluster-down demo clean

help:
	@echo "make demo          local cluster with simulated GPU nodes, workloads placed and shown"
	@echo "make test          lint + every test tier (unit, integration, e2e); what CI runs"
	@echo "make unit          unit tier only (no cluster)"
	@echo "make chaos         the long fault soaks (left out of make test)"
	@echo "make integration   tiers that need the local control plane"
	@echo "make lint          ruff, mypy (strict on the core), import-linter contracts"
	@echo "make bench         benchmarks, printing their figures"
	@echo "make crds          regenerate crds/ from the API models"
	@echo "make image         build the image with podman (no Docker engine) and print its size"
	@echo "make cluster       start the local control plane and keep it running"
	@echo "make cluster-down  stop it"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check operator tests e2e benchmarks
	$(BIN)/mypy operator/exo/gpu
	$(BIN)/lint-imports

unit: $(STAMP)
	$(BIN)/python -m pytest -q -m "not cluster" tests

# Control-plane binaries and helm: reused from ~/.cache/exo-gpu, built (with progress) if missing.
binaries: $(STAMP)
	$(BIN)/exo-gpu cluster build --helm

# The Dockerfile's image, built with podman (installed from Debian when missing), from the public
# base or, without registry access, a Debian base built with mmdebstrap. EXO_GPU_CA_BUNDLE names
# an extra CA bundle for a TLS-intercepting proxy (a build secret, never kept in the image).
image: $(STAMP)
	$(BIN)/exo-gpu cluster image

integration: binaries
	$(BIN)/python -m pytest -q -m "cluster and not chaos" tests e2e

test: lint binaries
	$(BIN)/python -m pytest -q -m "not chaos" tests e2e

# The long fault soaks (issue rows at full size).
chaos: binaries
	$(BIN)/python -m pytest -q -m chaos tests e2e

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_core.py
	$(BIN)/python benchmarks/bench_extender.py
	$(BIN)/python benchmarks/bench_topology.py
	$(BIN)/python benchmarks/bench_request_size.py
	$(BIN)/python benchmarks/bench_exporter.py
	$(BIN)/python benchmarks/bench_controller.py

crds: $(STAMP)
	$(BIN)/exo-gpu crds --output crds

cluster: $(STAMP)
	$(BIN)/exo-gpu cluster up --workdir .cluster

cluster-down: $(STAMP)
	$(BIN)/exo-gpu cluster down --workdir .cluster

demo: $(STAMP)
	$(BIN)/exo-gpu up --workdir .demo

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis .cluster
