# One command sets up everything and runs the tests: `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export AMQP_URL ?= amqp://guest:guest@127.0.0.1:5672/%2F
export DATABASE_URL ?= postgresql://postgres@127.0.0.1:5432/postgres

.PHONY: install test unit lint bench clean

$(BIN)/.installed: pyproject.toml $(wildcard package.json package-lock.json)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	if [ -f package.json ]; then npm ci --no-audit --no-fund --loglevel=error; fi
	touch $@

install: $(BIN)/.installed

# pytest exits 5 when it collects nothing; that is a failure here like any other.
# Two workers (pytest-xdist), each test module on one of them (its module-scoped stack
# started once): most of the suite waits on processes, brokers and databases, so two
# workers halve the time even on two cores. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
test: install
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile

unit: install
	$(BIN)/pytest -q tests/unit

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) node_modules .pytest_cache

# bss-sync at work against the local RabbitMQ/PostgreSQL (AMQP_URL, DATABASE_URL):
# sandbox BSS -> dispatcher -> pusher -> an Acme CRM stand-in, until Ctrl-C.
# Options: make demo DEMO_ARGS="--count 50" (or --no-wait; see python -m demo --help).
.PHONY: demo
demo: install
	$(BIN)/python -m demo $(DEMO_ARGS)
