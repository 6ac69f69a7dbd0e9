# ctrflow — every target does its own set-up from a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO_OUT ?= demo_out
PYTEST_ARGS ?=
# Test worker processes (pytest-xdist), a test file to each: the suite's models are small, so
# one process keeps a core only about half busy (measured on 2 idle cores: 2 workers ran 33 min
# of tests in 17 min; CI ran them one by one in 73 min).
TEST_WORKERS ?= 2

.PHONY: install demo test test-fast bench clean

$(STAMP): setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip>=24"
	$(BIN)/pip install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

## Runs the main job end to end on the simulator's default data.
demo: $(STAMP)
	$(BIN)/ctrflow demo --out $(DEMO_OUT)

## Runs the whole test suite (slow tests included).
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS) tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow" $(PYTEST_ARGS) tests

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) build *.egg-info
