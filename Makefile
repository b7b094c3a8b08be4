# medflow: two commands on a fresh machine.
#   make run   installs into .venv, runs the whole pipeline (dvc repro) on synthetic DICOM,
#              and prints the Bento it built and how to serve it
#   make test  installs into .venv and runs the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin

# Keep every tool's state inside the project, and nothing phoning home (we run offline).
export PATH := $(BIN):$(PATH)
export PREFECT_HOME ?= $(CURDIR)/.prefect
export BENTOML_HOME ?= $(CURDIR)/.bentoml
export DVC_SITE_CACHE_DIR ?= $(CURDIR)/.dvc_site
export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := False
export BENTOML_DO_NOT_TRACK := True
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
# a fresh Prefect database takes ~30 s to migrate; the default 20 s start-up timeout is too short
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120
export PREFECT_LOGGING_EXTRA_LOGGERS := medflow

.PHONY: install run flow serve test lint clean

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "medflow needs Python >= 3.11, found " + sys.version.split()[0]'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

install: $(VENV)/.installed

run: install
	dvc repro
	@echo
	@medflow show-bento reports/bento.json

flow: install
	$(BIN)/python -m flows.pipeline --root .

# the champion's Bento (reports/champion/): what `medflow models promote` / `rollback` chose
serve: install
	tag=$$(medflow models served-bento) && bentoml serve $$tag

test: install
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check src flows tests benchmarks
	$(BIN)/ruff format --check src flows tests benchmarks

clean:
	rm -rf data/synthetic data/ingested data/validation data/preprocessed models reports
