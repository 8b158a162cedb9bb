# The two commands: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

LOCK   := requirements.lock

.PHONY: run test test-workers test-container install test-peers clean bench bytecode lint lock

## The project and its test tools, at the versions of $(LOCK) (constraints: pyproject.toml's ranges say what
## may be installed, the lock which exact versions are). Reinstalled when either file changes.
$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c $(LOCK) -e '.[test]'
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

## Re-resolve $(LOCK) from pyproject.toml: the newest versions its ranges allow, for Python 3.11 (the
## Dockerfile's). LOCK_ARGS=--upgrade-package=NAME moves one package only; LOCK_ARGS= keeps the other pins.
## No hashes: in a constraints file they turn on pip's hash checking, which refuses the project itself.
LOCK_ARGS ?= --upgrade
lock:
	test -x $(BIN)/pip-compile || { $(PYTHON) -m venv $(VENV) && $(BIN)/pip install --quiet pip-tools; }
	CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile --quiet --extra test --strip-extras \
		--no-emit-index-url --no-emit-find-links $(LOCK_ARGS) -o $(LOCK) pyproject.toml

## Debian packages of the real peers the tests run (clamd, spamd, rspamd, swaks).
test-peers:
	bash tests/peers/install-debian-packages.sh

## Install everything the tests need, then run them.
test: $(STAMP) test-peers
	$(BIN)/pytest

## The end-to-end and fault tests again, every test gateway with `workers = 2` (a supervisor and two workers).
test-workers: $(STAMP) test-peers
	$(BIN)/pytest --gateway-workers 2 tests/e2e tests/faults

## The container tests: build deploy/Dockerfile on a base image made with debootstrap from Debian packages and
## run it on a Docker engine (a private dockerd when none runs; all started, built and run is removed after).
test-container: $(STAMP)
	bash tests/peers/install-container-packages.sh
	$(BIN)/pytest -m container tests/container

## Benchmark the gateway against a private Postfix instance (as root, about 20 minutes);
## writes docs/benchmarks.md. BENCH_ARGS passes options, e.g. BENCH_ARGS=--quick.
bench: bytecode
	bash bench/install.sh && $(BIN)/python -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache
