# The two commands: `make demo` and `make test`. Each sets itself up from a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TEST_OUT ?= test-output

.PHONY: demo test install bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,slurm]'
	touch $(STAMP)

install: $(STAMP)

## demo: the main job, an ensemble sweep on the embedded local backend
demo: $(STAMP)
	$(BIN)/htc demo

## test: every test; SLURM, MPI and browser parts are required (never skipped)
test: $(STAMP)
	mkdir -p $(TEST_OUT)
	HTC_REQUIRE_SLURM=1 $(BIN)/python -m pytest -q -p no:cacheprovider --junitxml=$(TEST_OUT)/junit.xml

## bench: the benchmarks; figures go to bench/results.md
bench: $(STAMP)
	$(BIN)/python bench/throughput.py --write bench/results.md

clean:
	rm -rf $(VENV) htc-data $(TEST_OUT)
