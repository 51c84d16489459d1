# Two commands on a fresh machine:
#   make demo   the whole product on the local stack (no cloud account)
#   make test   set up and run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv test test-fast lint demo up bench prereqs clean

$(STAMP): requirements.txt requirements-dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	@touch $(STAMP)

venv: $(STAMP)

prereqs:
	@bash deploy/local/prereqs.sh

test: $(STAMP) prereqs
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check handlers main.py deploy tests bench
	$(PY) -m ruff format --check handlers main.py deploy tests bench
	$(PY) -m mypy

demo: $(STAMP) prereqs
	$(PY) -m deploy.local.stack demo

up: $(STAMP) prereqs
	$(PY) -m deploy.local.stack up $(if $(CONFIG),--config $(CONFIG))

bench: $(STAMP)
	$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
