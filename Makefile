# taglens: `make demo` runs the whole pipeline on synthetic demo data; `make test` runs the tests.
# Each creates the virtual environment first: `make demo` installs the runtime only, `make test`
# adds the test tools (pytest, fuzzers, the browser driver). `make help` lists every target.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RUNTIME_STAMP := $(VENV)/.runtime-stamp
DEV_STAMP := $(VENV)/.dev-stamp
# Stages run through stages/run.sh, which finds .venv itself; the venv first on PATH also makes
# `dvc`, `prefect` and `mlflow` below the venv's.
export PATH := $(abspath $(VENV))/bin:$(PATH)

# Keep the tools make starts (dvc, prefect, mlflow) from phoning home: their environment is
# written once, in taglens/toolenv.py (standard library only, so it runs before `make setup`);
# a value already in the environment wins, as in Python.
TOOL_ENV := $(shell $(PYTHON) -m taglens.toolenv)
$(foreach pair,$(TOOL_ENV),$(eval export $(word 1,$(subst =, ,$(pair))) ?= $(word 2,$(subst =, ,$(pair)))))

.PHONY: help setup setup-dev demo test test-fast lint bench browser-deps team-deps mlflow-ui

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sort \
	  | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-15s %s\n", $$1, $$2}'

setup: $(RUNTIME_STAMP) ## create .venv with the runtime (pipeline, flows, web page)

setup-dev: $(DEV_STAMP) ## add the test and lint tools to .venv

# requirements.lock pins the versions the test suite passed with; pyproject.toml holds the ranges.
$(RUNTIME_STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements.lock -e .
	touch $(RUNTIME_STAMP)

$(DEV_STAMP): $(RUNTIME_STAMP)
	$(PY) -m pip install --quiet -c requirements.lock -e '.[dev]'
	touch $(DEV_STAMP)

demo: setup ## run the whole pipeline on synthetic data, score the test images, say where results are
	$(VENV)/bin/dvc repro
	$(PY) -m stages.summary --list-test-images predictions/demo-inputs.txt
	$(PY) -m stages.predict --input predictions/demo-inputs.txt --output predictions/demo.csv
	$(PY) -m stages.summary

# Headless Chromium for the browser test (Debian's package; browser downloads do not work offline).
# As root it installs the package; otherwise it says how, and the browser test skips with a reason.
browser-deps:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian's chromium for the browser test..."; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null \
	      || { echo "error: could not apt-get install chromium" >&2; exit 1; }; \
	  else echo "browser test needs chromium: sudo apt-get install chromium (it will be skipped)"; fi; }

# PostgreSQL for the team services (MLflow's shared store; docs/team.md) and their tests: Debian's
# package, whose initdb/pg_ctl taglens.services runs (as the `postgres` user when run as root).
POSTGRES_BIN ?= /usr/lib/postgresql/15/bin
team-deps:
	@test -x $(POSTGRES_BIN)/initdb || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian's postgresql for the team services..."; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get update -qq && apt-get install -y -qq --no-install-recommends postgresql >/dev/null \
	      || { echo "error: could not apt-get install postgresql" >&2; exit 1; }; \
	  else echo "team services need PostgreSQL: sudo apt-get install postgresql (their tests will be skipped)"; fi; }

# The web page on http://127.0.0.1:8000/ (serve.host/port), serving models:/taglens@champion.
.PHONY: serve
serve: setup ## the web page on http://127.0.0.1:8000 (upload a photo, get hashtags)
	$(VENV)/bin/taglens serve

# Two pytest-xdist workers, one a core: much of the suite waits on servers and subprocesses. A test
# module stays on one worker (--dist loadscope), so its module fixtures (a repository after
# `dvc repro`, the flowers pipeline) are built once. Modules are handed out in pytest's order, the
# pipelines of tests/e2e first, so no long one starts last. TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
test: setup-dev browser-deps team-deps ## the whole test suite, as CI runs it
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder --durations=30

# The edit-test loop: every test not marked slow (no real servers, pipelines or fuzzing).
test-fast: setup-dev ## the tests not marked slow (no servers, pipelines, browsers, fuzzing)
	$(PY) -m pytest -m "not slow" -q

lint: setup-dev ## ruff
	$(VENV)/bin/ruff check taglens stages flows tests bench
	$(VENV)/bin/ruff format --check taglens stages flows tests bench

bench: setup ## the benchmarks (results in bench/results/, summary in BENCHMARKS.md)
	$(PY) -m bench.run_all

mlflow-ui: setup ## the MLflow UI on http://127.0.0.1:5000
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db --host 127.0.0.1 --port 5000

# Prefect (docs/prefect.md): a server on 127.0.0.1:4200, the two scheduled deployments, a worker.
PREFECT_URL ?= http://127.0.0.1:4200/api
.PHONY: prefect-server deploy worker schedule
prefect-server: setup ## a Prefect server and UI on http://127.0.0.1:4200
	$(VENV)/bin/prefect server start --host 127.0.0.1 --port 4200

deploy: setup ## register both scheduled deployments on the server (for workers)
	PREFECT_API_URL=$(PREFECT_URL) $(PY) -m flows.deploy --repo .

worker: setup ## a process worker that runs the deployments' scheduled runs
	PREFECT_API_URL=$(PREFECT_URL) $(VENV)/bin/prefect worker start --pool \
		"$$($(PY) -c 'from taglens.params import load_params; print(load_params("params.yaml").team.pool)')"

# A team on one machine (docs/team.md): PostgreSQL, an MLflow server on it, a Prefect server with
# the work pool's workers, a Dask scheduler with workers, on params.yaml's team: ports; pids and
# logs under team.folder (.services/). It prints the variables to export.
.PHONY: services services-stop services-status
services: setup-team team-deps ## start the team services on this machine (docs/team.md)
	$(PY) -m taglens.services start

services-stop: ## stop what `make services` started
	$(PY) -m taglens.services stop

services-status: ## which team services run, and their URLs
	$(PY) -m taglens.services status

TEAM_STAMP := $(VENV)/.team-stamp
.PHONY: setup-team
setup-team: $(TEAM_STAMP) ## add the team extra (PostgreSQL driver, DVC remotes) to .venv

$(TEAM_STAMP): $(RUNTIME_STAMP)
	$(PY) -m pip install --quiet -c requirements.lock -e '.[team]'
	touch $(TEAM_STAMP)

# A long fuzzing campaign (docs/reliability.md): every parser target for FUZZ_SECONDS, with
# Pillow's Python plugins instrumented and a per-input time and memory limit. The corpora grow
# under .fuzz/ across campaigns; findings land in .fuzz/crashes/; the summary in bench/results/.
FUZZ_SECONDS ?= 300
FUZZ_TARGETS ?= all
.PHONY: fuzz
fuzz: setup-dev ## a long fuzzing campaign of every parser (docs/reliability.md)
	$(PY) tests/reliability/fuzz_campaign.py --seconds $(FUZZ_SECONDS) --targets $(FUZZ_TARGETS) \
	  --timeout 10 --rss-limit-mb 2048

# One machine: this one process serves both schedules and runs them (no worker). It uses the
# server in PREFECT_API_URL if set (UI, runs by hand), else a temporary one of its own.
schedule: setup ## serve the weekly retrain and nightly predict from this process
	$(PY) -m flows.schedule --repo .
