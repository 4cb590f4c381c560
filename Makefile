# Two commands for a new user:  `make train`  and  `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# The torch that `make setup` installs; GPU users who installed their own pass TORCH= (empty).
TORCH ?= torch==2.13.0

.PHONY: setup train test test-all test-slurm lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(if $(TORCH),$(BIN)/python -m pip install -q "$(TORCH)")
	$(BIN)/python -m pip install -q -e ".[dev]" $(if $(TORCH),-c constraints.txt)
	touch $@

setup: $(VENV)/.installed

train: setup  ## set up, then train the default model (pass overrides with ARGS="d_model=128")
	$(BIN)/python -m trainer $(ARGS)

# Two test files at a time (each test's runs are single-threaded; a file keeps its shared fixtures on
# one worker): about half the wall time on a 2-core machine. ARGS="-n 0" runs them one by one.
XDIST := -n 2 --dist loadfile

test: setup  ## set up, then run the fast test suite and the linter
	$(BIN)/python -m ruff check .
	$(BIN)/python -m pytest -q $(XDIST) $(ARGS)

test-all: setup  ## every test, the slow ones too (the SLURM tier apart: make test-slurm)
	$(BIN)/python -m pytest -q -m "not slurm" $(ARGS)

# A real single-node SLURM on this machine (scripts/local_slurm.sh installs and starts it; needs root and
# apt-get, else the tests say why they skip): a sweep through sbatch, a requeued job, srun + torchrun.
test-slurm: setup  ## the SLURM tier (about a minute)
	$(BIN)/python -m pytest -q -m slurm $(ARGS)

lint: setup
	$(BIN)/python -m ruff check .

bench: setup
	$(BIN)/python scripts/bench.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
