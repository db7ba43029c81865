# Newcomer entry points: `make demo` and `make test` each create .venv, install, and run.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# torch is installed first and pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.installed
LINT_PATHS := taoism tests benchmarks
# 1 (default): `make lint` also checks formatting (`ruff format --check`).
LINT_FORMAT ?= 1

.PHONY: venv data demo test lint format bench clean

# setup.py and the C file: the editable install builds the boundary's compiled hot path in place,
# so a changed C file must be rebuilt (docs/boundary.md, "The compiled hot path").
$(STAMP): pyproject.toml setup.py taoism/boundary/_fastpath.c Makefile
	@bash scripts/system-data.sh
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test,plot,data,dev]"
	touch $(STAMP)

venv: $(STAMP)

# System data sets (Debian packages): installed where we may, otherwise what to install is printed.
data:
	@bash scripts/system-data.sh

demo: $(STAMP) data
	$(VENV)/bin/taoism demo

# The suite runs the boundary's compiled hot path where it is built; the boundary tests run again
# on the pure-Python path (TAOISM_PURE_BOUNDARY=1), which must stay byte-identical.
BOUNDARY_TESTS := tests/test_boundary.py tests/test_fuzz_boundary.py tests/test_fastpath.py

test: $(STAMP) data
	$(PY) -m pytest -q --durations=15
	TAOISM_PURE_BOUNDARY=1 $(PY) -m pytest -q $(BOUNDARY_TESTS)

lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINT_PATHS)
ifeq ($(LINT_FORMAT),1)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
endif
	$(VENV)/bin/mypy taoism

# Rewrites files: lint fixes ruff can make, then the formatter (`make lint` checks both).
format: $(STAMP)
	$(VENV)/bin/ruff check --fix $(LINT_PATHS)
	$(VENV)/bin/ruff format $(LINT_PATHS)

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info
