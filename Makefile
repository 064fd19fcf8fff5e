# One command for the main job, one for the tests; each sets itself up in .venv on first use.
#   make reproduce   regenerate every figure and figures/results.json
#   make test        run the test suite
#   make test-under-load   the suite beside a CPU-bound burner on every core (PYTEST_ARGS selects a subset)
#   make docs        build the API reference into docs/_build/html
# On a machine with a GPU, choose the torch build first:  make TORCH="torch" test
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV ?= .venv
PY := $(VENV)/bin/python
# The real Omniglot data sits beside the checkout in ../shared/data; point LINMAML_DATA elsewhere to override.
export LINMAML_DATA ?= $(abspath ../shared/data)
export PYTHONHASHSEED := 0

PYTEST_ARGS ?=

.PHONY: setup test test-fast test-under-load verify reproduce bench docs clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[all,test]"
	touch $@

test: setup
	$(PY) -m pytest

# Tests bound events, not seconds (DESIGN.md): the suite must pass while every core is busy elsewhere.
# One busy-looping process per core runs beside pytest and is stopped (by its pid) when pytest ends.
test-under-load: setup
	@pids=""; cores=$$(getconf _NPROCESSORS_ONLN); for i in $$(seq $$cores); do $(PY) -c 'while True: pass' & pids="$$pids $$!"; done; \
	echo "test-under-load: $$cores CPU burners (pids$$pids) beside pytest"; \
	trap "kill $$pids" EXIT INT TERM; $(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow"

verify: setup
	$(VENV)/bin/linmaml verify

reproduce: setup
	$(VENV)/bin/linmaml reproduce

# figures/bench.json's CNN cases were measured with two threads (the command's default is one)
bench: setup
	$(VENV)/bin/linmaml bench --threads 2

# The API reference and tutorials (docs/), warnings as errors: a broken reference fails the build.
docs: setup
	$(PY) -m sphinx -E -b html -n -W --keep-going -q docs docs/_build/html
	@echo "docs: open docs/_build/html/index.html"

clean:
	rm -rf $(VENV) build *.egg-info
