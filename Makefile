# vae-pipeline: `make run` sets up .venv and runs the pipeline; `make test` runs the tests.
SHELL := /bin/bash
VENV := .venv
STAMP := $(VENV)/.installed
PYTHON ?= python3

# Quiet and offline: no telemetry from DVC, MLflow or Prefect. The same as vae_pipeline/environment.py
# TELEMETRY_OFF, which the Python code imports (tests/unit/test_facts_once.py checks that they agree).
export DO_NOT_TRACK := 1
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1
# Prefect's runs, logs and local API database stay in the project (git-ignored): params.yaml
# prefect.home, which the flows read too (tests/unit/test_facts_once.py checks that they agree).
export PREFECT_HOME ?= $(CURDIR)/.prefect
# dvc.yaml's `python` must be the venv's.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: help install run repro sweep exps test test-fast lint clean browser bench
help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/[$$][$$]/$$/g' \
	  | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[test,stack]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install the project (once)

run: $(STAMP)  ## run the whole pipeline on params.yaml: the Prefect flow, one task per DVC stage (RECIPE=NAME: docs/recipes.md)
	$(if $(RECIPE),python -m flows.recipe $(RECIPE),python -m flows.make_run)

# `make run RECIPE=NAME`: recipes/NAME.yaml as the DVC experiment recipe-NAME (flows/recipe.py, docs/recipes.md).
RECIPE ?=

repro: $(STAMP)  ## the same pipeline through plain `dvc repro` (no Prefect)
	dvc repro

sweep: $(STAMP)  ## train the grid of params.yaml `sweep` on Dask; writes reports/sweep.html
	python -m flows.sweep

exps: $(STAMP)  ## `dvc exp show` narrowed: the params that differ and the headline metrics (commands/exps.py)
	python -m commands.exps

# Two pytest-xdist workers, a test file to each at a time (tests/conftest.py): the slow tests wait on
# servers and subprocesses as much as they compute. The files go out in testpaths order, the team
# stack's (the longest group) first (--no-loadscope-reorder: by default xdist starts with the groups
# of most tests, whatever they take). TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 2
test: $(STAMP) lint browser postgres  ## lint, then the test suite (slow end-to-end tests included)
	pytest -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder

lint: $(STAMP)  ## ruff: lint and the layout rules ([tool.ruff] in pyproject.toml; .pre-commit-config.yaml runs them too)
	ruff check .

test-fast: $(STAMP)  ## run the tests, skipping the slow end-to-end ones
	pytest -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder -m "not slow"

clean:  ## remove every output named in params.yaml `paths` (keeps raw data, run record, mlflow.db, numba cache, DVC cache, .venv)
	set -o pipefail; python -m commands.clean | xargs -r -d '\n' rm -rf --

.PHONY: reliability
reliability: $(STAMP)  ## bad input, kills and attacks done for real; prints the reliability table
	pytest -m reliability

# MLflow: the run record of every training (docs/mlflow.md).
.PHONY: compare mlflow-ui
compare: $(STAMP)  ## reports/compare.html: the experiment's MLflow runs side by side
	python -m commands.compare

mlflow-ui: $(STAMP)  ## MLflow's UI over the embedded store, on 127.0.0.1 (params mlflow_ui.port; VAE_MLFLOW_UI_PORT=...)
	python -m commands.mlflow_ui

# The champion decoder over HTTP (docs/serving.md): latent vectors in, 28x28 images out.
.PHONY: serve
serve: $(STAMP)  ## serve the champion decoder over HTTP on 127.0.0.1 (params serve.port; VAE_SERVE_PORT=...)
	python -m commands.serve

# The report's browser test runs Debian's chromium headless; install it when missing
# (as root, with apt-get). Where it cannot be installed the test is skipped and says why.
browser:  ## install headless Chromium for the report's browser test, when missing
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=300 chromium; } \
	      || echo "chromium could not be installed: the browser test will be skipped"; \
	  else echo "chromium is missing and this is not root with apt-get: the browser test will be skipped"; fi; }

bench: $(STAMP)  ## benchmarks: training vs the article's loop, UMAP, the pipeline (see BENCHMARKS.md)
	python -m stages.download
	python -m benchmarks.train
	dvc repro embed
	python -m benchmarks.umap
	python -m benchmarks.pipeline

# The team stack (docs/team-stack.md): PostgreSQL, SeaweedFS's S3, mlflow server, Prefect server and
# worker, git over HTTP, a Dask scheduler, on params.yaml stack.host (127.0.0.1), under supervisord,
# every service behind credentials; state, logs and secrets in params.yaml stack.state_dir.
.PHONY: stack stack-down stack-status stack-env stack-worker-kit deploy postgres
KIT ?=
stack: $(STAMP) postgres  ## start the team stack (a second call finds it running and does nothing)
	python -m stack up

stack-down:  ## stop every service of the team stack (no process is left)
	python -m stack down

stack-status:  ## each service of the team stack: state, address, health
	python -m stack status

stack-env:  ## `eval "$$(make -s stack-env)"` does `source .stack/env`: make run, the flows, MLflow on the stack
	@python -m stack env

stack-worker-kit: $(STAMP)  ## what a worker host needs (env, TLS files) into KIT (default <stack.state_dir>/worker-kit)
	python -m stack worker-kit $(KIT)

deploy: $(STAMP)  ## put the scheduled retrain on the stack's work pool (cron: params.yaml retrain.schedule_cron)
	python -m stack deploy

# Debian's PostgreSQL, for the stack (its binaries run from /usr/lib/postgresql/*/bin; no system
# cluster is used). Installed as root with apt-get when missing; elsewhere the stack tests are skipped.
postgres:  ## install Debian's PostgreSQL for the team stack, when missing
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=300 postgresql; } \
	      || echo "postgresql could not be installed: the team stack cannot start, its tests will be skipped"; \
	  else echo "postgresql is missing and this is not root with apt-get: the team stack tests will be skipped"; fi; }
