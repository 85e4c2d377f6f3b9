# Two entry points: `make demo` (set up, then run the embedded demo) and `make test`.
# Both create or reuse the virtual environment in .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test benchmark clean-demo

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

# The experiment DAG on the embedded demo (config/demo.yaml overlays params.yaml): every table
# and figure in results/. A second run rebuilds nothing.
demo: setup
	PATH=$(CURDIR)/$(BIN):$$PATH DVC_NO_ANALYTICS=1 $(BIN)/snakemake --profile profiles/local --configfile config/demo.yaml

# pytest exits 5 when it collects no test; that is not a failure of the suite.
test: setup
	PATH=$(CURDIR)/$(BIN):$$PATH DVC_NO_ANALYTICS=1 $(BIN)/python -m pytest -q; status=$$?; if [ $$status -eq 5 ]; then exit 0; fi; exit $$status

benchmark: setup
	$(BIN)/python benchmarks/asad.py --batch 16 --repeats 3 --step-batch 2 --step-repeats 5

clean-demo:
	rm -rf data/demo-videos data/frames/demo data/demo-benchmark runs/pretrain/demo runs/track runs/segment results logs .snakemake report.html
