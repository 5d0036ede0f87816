# One entry point for people and CI. Each target sets up what it needs in .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint typecheck unit browser chaos soak bench bench-e2e bench-peers bench-postgres bench-prune bench-telemetry bench-instructions bench-breakdown clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The product as a user installs it (not editable), then the demo.
demo: $(BIN)/python
	$(BIN)/pip install --quiet .
	$(BIN)/hms-bus demo

$(VENV)/.dev: pyproject.toml $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.dev
	$(BIN)/mypy

# The suite in two processes, then the tests that time processes, restarts and outages
# on their own (marked serial). Plain `pytest` runs everything in one process.
unit: $(VENV)/.dev browser
	$(BIN)/pytest -n 2 -m "not serial"
	$(BIN)/pytest -m serial

# The console's browser tests drive Debian's chromium (through Playwright's
# executable_path); install it when it is missing.
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { \
	  echo "installing chromium (Debian's package) for the console's browser tests"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; }

# Everything CI runs: lint, types, the whole test suite.
test: lint typecheck unit

# The chaos suite's long form: every role in its own process, each fault in turn (kills,
# a rebalance storm, the broker stopped, Postgres restarted, replays, timers), at least
# 1,000 workflows over at least 10 minutes; a table of faults against invariants.
# `make test` runs its short form (tests/test_chaos.py).
chaos: $(VENV)/.dev
	$(BIN)/python tests/chaos/suite.py

# 200,000 steps over 30 minutes, tracing and metrics on, Kafka (Tansu) + Postgres: RSS
# must grow by less than 10% and the asyncio task count stay flat. Not in CI.
soak: $(VENV)/.dev
	$(BIN)/python bench/soak.py

bench: $(VENV)/.dev
	$(BIN)/python bench/memory_throughput.py

# Where users run: Kafka (Tansu, started for the run) + Postgres, callers that start and
# wait, one process and four, against a raw aiokafka chain on the same broker.
bench-e2e: $(VENV)/.dev
	$(BIN)/python bench/e2e.py

# The same, with a Celery chain (the local Redis) and a DBOS workflow (the local Postgres).
bench-peers: $(VENV)/.dev
	$(BIN)/pip install --quiet -e '.[dev,peers]'
	$(BIN)/python bench/e2e.py --peers

# The projector's writes into Postgres (HMS_TEST_PG_URL or the local server) vs raw asyncpg.
bench-postgres: $(VENV)/.dev
	$(BIN)/python bench/postgres_projector.py

# The projector's throughput while retention deletes a million history rows.
bench-prune: $(VENV)/.dev
	$(BIN)/python bench/prune.py

# What tracing and metrics cost on the memory benchmark (off vs metrics vs traces).
bench-telemetry: $(VENV)/.dev
	$(BIN)/python bench/telemetry_cost.py

# Instructions per workflow on memory:// under valgrind (steady to ±0.3%, unlike time).
bench-instructions: $(VENV)/.dev
	$(BIN)/python bench/instructions.py

# Where a light-load step's time goes on Kafka (Tansu) + Postgres.
bench-breakdown: $(VENV)/.dev
	$(BIN)/python bench/light_breakdown.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
