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

.PHONY: install run flow serve test lint clean server deployments

# requirements.lock pins every package `make install` installs (pip takes it as constraints).
# `make lock` regenerates it after a change of the dependencies in pyproject.toml, keeping the
# other pins (UPGRADE=1: the newest versions allowed): uv resolves for Python 3.11 against the
# package indexes pip is configured with here (`pip config list`: extra indexes, find-links
# such as the CPU build of torch, constraint files), choosing among all of them as pip does.
LOCK := requirements.lock

$(VENV)/.installed: pyproject.toml $(LOCK)
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "medflow needs Python >= 3.11, found " + sys.version.split()[0]'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c $(LOCK) -e '.[dev]' || { \
	  echo "make install: pip found no versions that satisfy pyproject.toml within $(LOCK);" \
	    "after changing a dependency run make lock (README, 'Pinned versions')" >&2; exit 1; }
	@touch $@

install: $(VENV)/.installed

.PHONY: lock
lock:
	@[ -x $(BIN)/uv ] || { $(PYTHON) -m venv $(VENV) && $(BIN)/python -m pip install --quiet --disable-pip-version-check uv; }
	pip_indexes=$$($(BIN)/python -m pip config list | sed -nE \
	    -e "s/^[^.]*\.(index-url|extra-index-url|find-links)='(.*)'$$/\1 \2/p" \
	    -e "s/^[^.]*\.constraint='(.*)'$$/constraints \1/p" | \
	  while read -r option values; do for v in $$values; do echo "--$$option $$v"; done; done | sort -u); \
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 \
	  --index-strategy unsafe-best-match $$pip_indexes $(if $(UPGRADE),--upgrade) \
	  --custom-compile-command 'make lock' --quiet -o $(LOCK)

run: install
	dvc repro
	@echo
	@medflow show-bento reports/bento.json

flow: install
	medflow flow --root .

# Orchestration (docs/orchestration.md): a Prefect server (SQLite in $(PREFECT_HOME)), then, in
# another shell, the training (cron + data-change trigger) and watcher deployments served.
PREFECT_PORT ?= 4200
server: install
	prefect server start --host 127.0.0.1 --port $(PREFECT_PORT)

deployments: install
	PREFECT_API_URL=http://127.0.0.1:$(PREFECT_PORT)/api medflow orchestrate serve --root .

# the champion's Bento of params.yaml's dataset (reports/champion/<dataset key>/): what
# `medflow models promote` / `rollback` chose; another dataset's: make serve DATASET=<key>
# (keys: medflow models datasets)
serve: install
	tag=$$(medflow models served-bento $(if $(DATASET),--dataset $(DATASET))) && bentoml serve $$tag

# System packages the tests drive: Debian's chromium (tests/integration/test_prefect_ui.py
# opens the Prefect UI headless; no browser download at run time; fonts-liberation, which
# --no-install-recommends would drop, for legible screenshots) and PostgreSQL (a Prefect
# server on Postgres), and tesseract-ocr (with its English data, tesseract-ocr-eng: OCR of
# burned-in text at ingest, deid.burned_in_text; docs/ingest.md), and a PACS: Orthanc with its
# DICOMweb plugin and dcmtk (storescu/echoscu), which tests/integration/test_pacs*.py start on
# loopback (docs/pacs.md). Only what is missing is
# installed, with sudo when not root; SKIP_SYSTEM_DEPS=1 skips this step (those tests then
# skip and say why).
.PHONY: system-deps
system-deps:
	@[ -n "$(SKIP_SYSTEM_DEPS)" ] && exit 0; missing=; \
	command -v chromium >/dev/null || command -v chromium-browser >/dev/null || missing=" chromium fonts-liberation"; \
	command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v tesseract >/dev/null || missing="$$missing tesseract-ocr tesseract-ocr-eng"; \
	command -v Orthanc >/dev/null || [ -x /usr/sbin/Orthanc ] || missing="$$missing orthanc"; \
	ls /usr/share/orthanc/plugins/libOrthancDicomWeb.so >/dev/null 2>&1 || missing="$$missing orthanc-dicomweb"; \
	command -v storescu >/dev/null || missing="$$missing dcmtk"; \
	[ -z "$$missing" ] && exit 0; \
	if ! command -v apt-get >/dev/null; then \
	  echo "system-deps: no apt-get here; install$$missing with your package manager, or run with SKIP_SYSTEM_DEPS=1 (the browser/PostgreSQL/OCR tests then skip)" >&2; exit 1; fi; \
	if [ "$$(id -u)" = 0 ]; then sudo=; elif command -v sudo >/dev/null; then sudo="sudo -n"; else \
	  echo "system-deps: need root or sudo to apt-get install$$missing; or run with SKIP_SYSTEM_DEPS=1" >&2; exit 1; fi; \
	echo "system-deps: apt-get install$$missing"; \
	$$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null || { \
	  echo "system-deps: apt-get install$$missing failed (see above); fix it, or run with SKIP_SYSTEM_DEPS=1" >&2; exit 1; }

test: system-deps install
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check src flows tests benchmarks
	$(BIN)/ruff format --check src flows tests benchmarks
	$(BIN)/lint-imports

clean:
	rm -rf data/synthetic data/ingested data/validation data/preprocessed models reports
