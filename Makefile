# Two entry points a newcomer needs: `make demo` and `make test`.
# Both create ./.venv on first use and install the pinned CPU requirements into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	touch $@

.PHONY: install test demo
install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q

demo: install
	$(PY) -m ecgmamba.demo
