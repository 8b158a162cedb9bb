# The two commands: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-workers install test-peers clean bench bytecode lint

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

## Byte-code of the gateway's own modules, as a wheel install has it: each gateway process then loads
## it instead of compiling every module at start (about 1 MB less memory a process, a faster start).
bytecode: $(STAMP)
	$(BIN)/python -m compileall -q gateway policies

## Start the gateway on the embedded default config (127.0.0.1:2525, STARTTLS, spool in ./var).
run: bytecode
	$(BIN)/gateway run

## Lint and format check alone (make test runs them too: tests/invariants/test_lint.py).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## Debian packages of the real peers the tests run (clamd, spamd, rspamd, swaks).
test-peers:
	bash tests/peers/install-debian-packages.sh

## Install everything the tests need, then run them.
test: $(STAMP) test-peers
	$(BIN)/pytest

## The end-to-end and fault tests again, every test gateway with `workers = 2` (a supervisor and two workers).
test-workers: $(STAMP) test-peers
	$(BIN)/pytest --gateway-workers 2 tests/e2e tests/faults

## Benchmark the gateway against a private Postfix instance (as root, about 20 minutes);
## writes docs/benchmarks.md. BENCH_ARGS passes options, e.g. BENCH_ARGS=--quick.
bench: bytecode
	bash bench/install.sh && $(BIN)/python -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache
