# posrig — `make run` and `make test` work on a fresh Debian machine (they install first).
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
CONFIG  ?= configs/labs/virtual.yaml
N       ?= 10

.PHONY: install run test test-unit test-integration bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install-system.sh
	bash scripts/install-system.sh
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,notebooks,pcsc]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

# The main job: a sign-on series on every terminal of the embedded virtual lab.
run: install
	$(BIN)/rig signon all -n $(N) --config $(CONFIG)

test: install
	$(BIN)/ruff check rig tests benchmarks
	$(BIN)/pytest -q -ra tests

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

lint: install
	$(BIN)/ruff check rig tests benchmarks

clean:
	rm -rf $(VENV) results .pytest_cache
