# Two commands do all the set-up:  `make demo`  and  `make test`.
# Both create .venv on first use. torch is installed first and pinned to a CPU build by default;
# on a GPU machine choose your own, e.g.  make demo TORCH_SPEC="torch==2.13.0 --index-url <your CUDA index>"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.latentmill-installed
PYTEST_ARGS ?=

.PHONY: setup demo test clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/latentmill run --input examples/shapes.parquet --output out/demo --model builtin:shapes

test: setup
	bash infra/install-test-services.sh
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf out .pytest_cache
