# Skylark: `make run` for the whole app on embedded defaults, `make test` for the checks.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run demo test lint format install migrate bench clean messages vendor

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

migrate: install
	$(PY) manage.py migrate --noinput
	$(PY) manage.py collectstatic --noinput --verbosity 0

## The whole app on this machine: embedded Redis, worker, beat, dev mailbox, web (Ctrl-C stops).
run: migrate
	$(PY) manage.py run

## Headless: import the sample contacts, send a campaign to the dev mailbox, print the report.
demo: migrate
	$(PY) manage.py demo

## Lint, the layers contract, mypy on mailkit and the whole test suite (SQLite unless DATABASE_URL is set).
test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest

lint: install
	$(VENV)/bin/ruff check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

## Compile the zh-Hans catalogue (needs GNU gettext's msgfmt; the .mo is committed).
messages:
	msgfmt --check -o locale/zh_Hans/LC_MESSAGES/django.mo locale/zh_Hans/LC_MESSAGES/django.po

## Rebuild the block editor's vendored JavaScript from npm (needs npm; the files are committed).
vendor:
	sh scripts/vendor_static.sh

bench: install
	$(PY) bench/send_throughput.py

clean:
	rm -rf var .pytest_cache .ruff_cache
