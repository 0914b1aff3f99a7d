# Everyday commands; CI runs `bash .ci/run` (which installs system packages first).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: venv lint test test-fast bench demo clean

venv: $(VENV)/.installed
$(VENV)/.installed: setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[test,postgres,supervisord]'
	touch $@

lint: venv  ## ruff and mypy --strict, as CI runs them
	$(VENV)/bin/ruff check daemon tests bench
	$(VENV)/bin/mypy --config-file setup.cfg daemon/shardsync

test: venv  ## the whole suite (unit, property, integration, system)
	$(VENV)/bin/pytest

test-fast: venv  ## unit and property tests only (seconds)
	$(VENV)/bin/pytest tests/unit tests/fuzz -q

bench: venv  ## the benchmarks; each prints its figures (never asserted in tests)
	$(PY) bench/throughput.py
	$(PY) bench/failover.py
	$(PY) bench/resources.py

demo: venv
	$(VENV)/bin/shardsync demo

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis demo-state
