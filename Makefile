# Two entry points on a fresh machine with Python >= 3.11:
#   make demo   -- create .venv, install ntkal, run the main job on embedded default data
#   make test   -- create .venv, install ntkal[test], run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# two pytest processes, one per core of the 2-core CI machine; a test file stays on one of them
# (its module-scoped fixtures are built once). TEST_WORKERS=0 runs in this process. The 15
# slowest tests are listed at the end (the suite aims at ~15 min on 2 cores).
TEST_WORKERS ?= 2

.PHONY: demo test venv clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test]"
	# SevenNet-0's checkpoint file for load_pretrained("sevennet-0") and its tests: ntkal reads the
	# file, it needs neither sevenn's code nor PyTorch (no dependencies installed)
	$(BIN)/python -m pip install -q --no-deps "sevenn==0.13.0"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 $(BIN)/ntkal run experiments/configs/demo.toml

test: $(STAMP)
	OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15

clean:
	rm -rf $(VENV) runs data_cache
