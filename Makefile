# make demo: the main job on the embedded default; make test: lint, format check, the
# documentation built in strict mode and the whole suite (the 25 slowest tests listed);
# make test-fast: the tests not marked slow (no servers, subprocesses or training), for the
# inner loop; make docs: the documentation site, into build/site/.
# Both (re)create .venv when it is missing or older than pyproject.toml.
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast lint docs format bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) && $(PY) -c 'import sys' 2>/dev/null || $(PYTHON) -m venv --clear $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/vitpareto demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet --site-dir build/site

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir build/site

test: lint
	$(PY) -m pytest -n 2 --dist loadgroup -q --durations=25

test-fast: lint
	$(PY) -m pytest -n 2 --dist loadgroup -q -m "not slow"

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(STAMP)
	$(PY) benchmarks/bench_compress.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info build/site build/api
