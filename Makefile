# Two commands do all the set-up on a fresh machine:
#   make run    create .venv if missing, install eroseg, run the whole pipeline (embedded default)
#   make test   same set-up, then ruff and the fast test tier (under 5 minutes on 2 cores)
# More tests: make test-slow (real-layout end-to-end runs, ~4 minutes on 2 cores), make test-slurm (the
# SLURM tier on a local test cluster, a few minutes), make test-all (every tier that runs without a GPU, in
# one pytest run). CI (.ci/run) runs make test, then make test-slow and make test-slurm.
# CORES sets snakemake's --cores; PYTHON the interpreter used to create .venv.

PYTHON ?= python3
CORES ?= 2
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Installed without byte-compiling (pip's compile step took half of the ~2.5-minute install); Python
# writes each module's .pyc on its first import instead, which the recipes allow even where the
# environment sets PYTHONDONTWRITEBYTECODE.
unexport PYTHONDONTWRITEBYTECODE
PYTEST := MPLBACKEND=Agg PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q

.PHONY: run test test-slow test-slurm test-all install report clean-results

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The build constraint lets pip build visdom (required by adv-lib, eroseg[minnorm]) from its source archive.
$(STAMP): pyproject.toml workflow/envs/build-constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet --no-compile --build-constraint workflow/envs/build-constraints.txt -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# The default profile prints each job's command and a failed job's log; Snakemake does not load
# workflow/profiles/default by itself (it looks for profiles/default beside the Snakefile), so it is named.
run: $(STAMP)
	MPLBACKEND=Agg PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --profile workflow/profiles/default --cores $(CORES) --rerun-incomplete
	MPLBACKEND=Agg PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --cores $(CORES) --report results/report.html

test: $(STAMP)
	$(BIN)/ruff check .
	$(PYTEST) -m "not slow and not gpu and not slurm"

# The slow tier without the SLURM tests (those are test-slurm's): with make test and make test-slurm, every
# test that runs without a GPU, each once.
test-slow: $(STAMP)
	$(PYTEST) -m "slow and not gpu and not slurm"

# The SLURM tests start a local test cluster (tests/slurm/cluster.sh; apt-installs slurm-wlm as root)
# and are skipped with its one-line reason where it cannot start.
test-slurm: $(STAMP)
	$(PYTEST) -m slurm

test-all: $(STAMP)
	$(BIN)/ruff check .
	$(PYTEST) -m "not gpu"

report: $(STAMP)
	MPLBACKEND=Agg PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --cores $(CORES) --report results/report.html

clean-results:
	rm -rf results/synthetic results/tests results/report.html .snakemake
