# posrig — `make run` and `make test` work on a fresh Debian machine (they install first).
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
CONFIG  ?= configs/labs/virtual.yaml
N       ?= 10

.PHONY: install run test test-unit test-integration bench fuzz chaos lint lab clean

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install-system.sh
	bash scripts/install-system.sh
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,notebooks,pcsc]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

# The main job: the demo soak campaign on the embedded virtual lab (4 terminals, sign-on and
# sales under a small fault matrix, about two minutes), then its morning report.
CAMPAIGN ?= configs/campaigns/demo.yaml
run: install
	$(BIN)/rig soak run $(CAMPAIGN)
	$(BIN)/rig report last --config $(CONFIG) --html results/demo-report.html

test: install
	$(BIN)/ruff check rig tests benchmarks fuzz
	$(BIN)/pytest -q -ra -n 2 --dist loadfile -m "not timing" tests
	$(BIN)/pytest -q -ra -m timing tests

test-unit: install
	$(BIN)/pytest -q tests/unit

test-integration: install
	$(BIN)/pytest -q tests/integration

bench: install
	$(BIN)/python benchmarks/signon_accuracy.py
	$(BIN)/python benchmarks/sale_accuracy.py
	$(BIN)/python benchmarks/proxy_overhead.py
	$(BIN)/python benchmarks/kernel_faults.py
	$(BIN)/python benchmarks/truth_wire.py
	$(BIN)/python benchmarks/analysis_speed.py
	$(BIN)/python benchmarks/soak_efficiency.py
	$(BIN)/python benchmarks/host_load.py

# Fuzzing at scale (not part of `make test`, which runs a seeded slice of it): every parser that
# reads untrusted bytes, 1 M inputs in all (coverage-guided with atheris), crashes / hangs /
# memory growth / rate per target. FUZZ_ARGS e.g. "--target psu-sim --budget 50000 --seed 7".
FUZZ_BUDGET ?= 1000000
FUZZ_ARGS ?=
fuzz: install
	$(BIN)/python -m fuzz --budget $(FUZZ_BUDGET) $(FUZZ_ARGS)

# 20 SIGKILLs of the rig service during series, sales, held faults and a soak (tests/chaos.py);
# prints kills, cycles, lost events, duplicate cycles, faults left. A 3-kill slice is in make test.
KILLS ?= 20
chaos: install
	$(BIN)/python -m tests.chaos --kills $(KILLS)

lint: install
	$(BIN)/ruff check rig tests benchmarks fuzz

# JupyterLab on notebooks/ with the project's kernel (the venv's python3); RIG_RESULTS as set.
lab: install
	$(BIN)/jupyter lab --notebook-dir=notebooks

clean:
	rm -rf $(VENV) results .pytest_cache
