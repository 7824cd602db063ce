# tiercache: `make demo` runs the demo, `make test` runs lint, types and the whole test suite.
# Both set themselves up on a fresh clone: the virtual environment lives in .venv/.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
export TF_CPP_MIN_LOG_LEVEL := 1

.PHONY: venv demo test lint typecheck pytest bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,sim,tf,models]'
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(PY) examples/demo.py

lint: venv
	$(PY) -m ruff check tiercache policies tests bench examples

typecheck: venv
	$(PY) -m mypy

pytest: venv
	$(PY) -m pytest -q

test: lint typecheck pytest

bench: venv
	$(PY) bench/bench_store.py
	$(PY) bench/bench_policy.py
	$(PY) bench/bench_engine.py
	$(PY) bench/bench_sim.py

clean:
	rm -rf .tiercache build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
