# Two entry points: `make demo` (set up, then run the embedded demo) and `make test`.
# Both create or reuse the virtual environment in .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_CONFIG := --config params.yaml --config config/demo.yaml

.PHONY: setup demo test benchmark clean-demo

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake --profile profiles/local --configfile config/demo.yaml

# pytest exits 5 when it collects no test; that is not a failure of the suite.
test: setup
	$(BIN)/python -m pytest -q; status=$$?; if [ $$status -eq 5 ]; then exit 0; fi; exit $$status

benchmark: setup
	$(BIN)/python benchmarks/asad.py --batch 16 --repeats 3 --step-batch 2 --step-repeats 5

clean-demo:
	rm -rf demo-output
