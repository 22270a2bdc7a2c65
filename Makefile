# taglens: `make demo` runs the whole pipeline on synthetic demo data; `make test` runs the tests.
# Both create the virtual environment and install everything first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# dvc.yaml runs `python -m stages.X`: that must be the venv's interpreter.
export PATH := $(abspath $(VENV))/bin:$(PATH)

# Keep the tools from phoning home (and waiting on a network that may not be there).
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120
export MLFLOW_DISABLE_TELEMETRY := true
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION := false
export DVC_NO_ANALYTICS := 1
export DO_NOT_TRACK := 1
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: setup demo test lint bench browser-deps mlflow-ui

setup: $(STAMP)

# requirements.lock pins the versions the test suite passed with; pyproject.toml holds the ranges.
$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements.lock -e '.[dev]'
	touch $(STAMP)

demo: setup
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

# The web page on http://127.0.0.1:8000/ (serve.host/port), serving models:/taglens@champion.
.PHONY: serve
serve: setup
	$(PY) -m taglens.web

test: setup browser-deps
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check taglens stages flows tests bench

bench: setup
	$(PY) -m bench.run_all

mlflow-ui: setup
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db --host 127.0.0.1 --port 5000

# Prefect (docs/prefect.md): a server on 127.0.0.1:4200, the two scheduled deployments, a worker.
PREFECT_URL ?= http://127.0.0.1:4200/api
.PHONY: prefect-server deploy worker
prefect-server: setup
	$(VENV)/bin/prefect server start --host 127.0.0.1 --port 4200

deploy: setup
	PREFECT_API_URL=$(PREFECT_URL) $(PY) -m flows.deploy --repo .

worker: setup
	PREFECT_API_URL=$(PREFECT_URL) $(VENV)/bin/prefect worker start --pool taglens

# A long fuzzing campaign (docs/reliability.md): every parser target for FUZZ_SECONDS, with
# Pillow's Python plugins instrumented and a per-input time and memory limit. The corpora grow
# under .fuzz/ across campaigns; findings land in .fuzz/crashes/; the summary in bench/results/.
FUZZ_SECONDS ?= 300
FUZZ_TARGETS ?= all
.PHONY: fuzz
fuzz: setup
	$(PY) tests/reliability/fuzz_campaign.py --seconds $(FUZZ_SECONDS) --targets $(FUZZ_TARGETS) \
	  --timeout 10 --rss-limit-mb 2048
