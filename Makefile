# Two commands on a fresh machine:
#   make demo   the whole product on the local stack (no cloud account)
#   make test   set up and run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv test lint demo up bench reliability evidence prereqs clean

# The first run installs the dependencies (a minute or two): it says so, and pip shows each package.
$(STAMP): requirements.txt requirements-dev.txt
	@test -x $(PY) || { $(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	  || { echo "make: $(PYTHON) is Python $$($(PYTHON) -c 'import platform; print(platform.python_version())'); Python 3.11+ is needed: make $(MAKECMDGOALS) PYTHON=python3.11"; exit 1; }; \
	  echo "Creating $(VENV) with $(PYTHON)..."; $(PYTHON) -m venv $(VENV); }
	@echo "Installing the dependencies into $(VENV) (requirements-dev.txt; a minute or two the first time)..."
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --disable-pip-version-check -r requirements-dev.txt
	@touch $(STAMP)
	@echo "Dependencies installed."

venv: $(STAMP)

prereqs:
	@bash local/prereqs.sh

test: $(STAMP) prereqs
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check handlers main.py deploy local tests evidence
	$(PY) -m ruff format --check handlers main.py deploy local tests evidence
	$(PY) -m mypy

demo: $(STAMP) prereqs
	$(PY) -m local.stack demo $(DEMO_ARGS)

up: $(STAMP) prereqs
	$(PY) -m local.stack up $(if $(CONFIG),--config $(CONFIG))

# Performance evidence (docs/PERFORMANCE.md): about 40 minutes on 2 cores; results/performance.*
bench: $(STAMP) prereqs
	$(PY) -m evidence.bench $(BENCH_ARGS)

# Reliability evidence (docs/RELIABILITY.md): fault injection over every backend at the published
# setting (1,000 events) and at a harsher one (rate 0.2, every kind with 412/409 on the ledger, every
# event delivered twice), crash injection at every step boundary, 2,000 generated bad inputs, batch:
# windows under both (evidence/reliability/windows.py), hostile upstreams (every backend, Entra, the
# metadata server), replays (of a bucket and of a dead-letter subscription; Dataflow at 300 objects,
# then every backend at 120) under faults and SIGKILLs; about 50 minutes; results/{faults,faults-harsh,
# crashes,badinput,windows-crashes,windows-faults,windows-*-all-backends,hostile,replay,replay-dead-letters,
# replay-all-backends,replay-dead-letters-all-backends}.*
RELIABILITY_BACKENDS ?= dataflow,datafusion,fabric,dataproc
reliability: $(STAMP) prereqs
	$(PY) -m evidence.reliability.faults --events 1000 --rate 0.1 --kinds 429,503,timeout,reset,lost --seed 1 --duplicates 0.2 --backends $(RELIABILITY_BACKENDS) --status-push
	$(PY) -m evidence.reliability.faults --events 400 --rate 0.2 --kinds all --seed 1 --duplicates 1.0 --backends $(RELIABILITY_BACKENDS) --status-push --results faults-harsh
	$(PY) -m evidence.reliability.crashes --per-boundary 3 --backends $(RELIABILITY_BACKENDS)
	$(PY) -m evidence.reliability.badinput --cases 2000 --seed 7
	$(PY) -m evidence.reliability.windows crashes --per-boundary 2 && $(PY) -m evidence.reliability.windows faults --events 1000 --window 100 --rate 0.1 --kinds 429,503,timeout,reset,lost --seed 1 --duplicates 0.2
	$(PY) -m evidence.reliability.windows crashes --per-boundary 1 --backends $(RELIABILITY_BACKENDS) --results windows-crashes-all-backends
	$(PY) -m evidence.reliability.windows faults --events 400 --window 40 --rate 0.1 --kinds 429,503,timeout,reset,lost --seed 1 --duplicates 0.2 --backends $(RELIABILITY_BACKENDS) --results windows-faults-all-backends
	$(PY) -m evidence.reliability.hostile --fuzz 200 --seed 11
	$(PY) -m evidence.reliability.replay --objects 300 --already 0.3 --kills 6 --rate 0.1 --kinds 429,503,timeout,reset,lost --seed 1
	$(PY) -m evidence.reliability.replay --objects 300 --already 0.3 --kills 6 --rate 0.1 --kinds 429,503,timeout,reset,lost --seed 1 --source dead-letters --results replay-dead-letters
	$(PY) -m evidence.reliability.replay --objects 120 --already 0.3 --kills 2 --rate 0.1 --kinds 429,503,timeout,reset,lost --seed 1 --backends $(RELIABILITY_BACKENDS) --results replay-all-backends
	$(PY) -m evidence.reliability.replay --objects 120 --already 0.3 --kills 2 --rate 0.1 --kinds 429,503,timeout,reset,lost --seed 1 --backends $(RELIABILITY_BACKENDS) --source dead-letters --results replay-dead-letters-all-backends

evidence: bench reliability

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
