# The two commands of the README: `make demo` and `make test`.
# Both create .venv if needed, install CPU torch first (a bare `torch` requirement would pull a
# multi-GB CUDA build), then the project with its extras.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH)"
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m pyro_mmt.cli demo

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(PY) -m ruff check pyro_mmt models guides tests examples benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
