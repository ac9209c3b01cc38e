# vae-pipeline: `make run` sets up .venv and runs the pipeline; `make test` runs the tests.
SHELL := /bin/bash
VENV := .venv
STAMP := $(VENV)/.installed
PYTHON ?= python3

# Quiet and offline: no telemetry from DVC, MLflow or Prefect.
export DO_NOT_TRACK := 1
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1
# dvc.yaml's `python` must be the venv's.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: help install run repro test test-fast clean bench
help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install the project (once)

run: $(STAMP)  ## run the whole pipeline on params.yaml (dvc repro)
	dvc repro

test: $(STAMP)  ## run the test suite (slow end-to-end tests included)
	pytest

test-fast: $(STAMP)  ## run the tests, skipping the slow end-to-end ones
	pytest -m "not slow"

clean:  ## remove generated outputs (keeps .venv and the DVC cache)
	rm -rf data/embeddings models reports .checkpoints

bench: $(STAMP)  ## benchmarks: training vs the article's loop, UMAP, the pipeline (see BENCHMARKS.md)
	python -m stages.download
	python -m benchmarks.train
	dvc repro embed
	python -m benchmarks.umap
	python -m benchmarks.pipeline
