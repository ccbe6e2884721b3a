# Two commands do all the set-up on a fresh machine:
#   make run    create .venv if missing, install eroseg, run the whole pipeline (embedded default)
#   make test   same set-up, then the test suite (SLURM tests included when a test cluster can start)
# CORES sets snakemake's --cores; PYTHON the interpreter used to create .venv.

PYTHON ?= python3
CORES ?= 2
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test install report clean-results

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	MPLBACKEND=Agg PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --cores $(CORES) --rerun-incomplete
	MPLBACKEND=Agg PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --cores $(CORES) --report results/report.html

# The SLURM tests start a local test cluster (tests/slurm/cluster.sh; apt-installs slurm-wlm as root)
# and are skipped with its one-line reason where it cannot start.
test: $(STAMP)
	MPLBACKEND=Agg PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q -m "not slow and not gpu"

report: $(STAMP)
	MPLBACKEND=Agg PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --cores $(CORES) --report results/report.html

clean-results:
	rm -rf results/synthetic results/tests results/report.html .snakemake
