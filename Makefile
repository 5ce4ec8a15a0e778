# flask-tasks developer commands. Everything installs itself into .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev
PORT ?= 5000

.PHONY: install demo test pytest lint bench bench-quick wrk clean chromium soak

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e . --group dev
	touch $(STAMP)

install: $(STAMP)

## make demo: run the quickstart on the embedded default (no Redis needed)
demo: $(STAMP)
	@echo "flask-tasks quickstart: open http://127.0.0.1:$(PORT)/  (Ctrl+C stops it)"
	cd examples/quickstart && ../../$(PY) -m flask --app quickstart run --port $(PORT)

## make test: lint, type-check and run the whole test suite
test: lint pytest

# Two processes (pytest-xdist), whole files each: most tests wait on workers and browsers,
# so this halves the wall time on a 2-core machine. PYTEST_ARGS= runs it serially, once.
# A test that fails is run again up to twice (listed as "rerun" in the summary): on a
# shared 2-core machine a worker or browser can miss a deadline; a real failure fails
# all three times.
PYTEST_ARGS ?= -n 2 --dist loadfile --reruns 2 --reruns-delay 1
pytest: $(STAMP) chromium
	$(PY) -m pytest $(PYTEST_ARGS)

# Browser tests need Debian's Chromium; install it when we can (root), else they skip.
chromium:
	@command -v chromium >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || apt-get install -y chromium >/dev/null 2>&1 || (apt-get update >/dev/null 2>&1 && apt-get install -y chromium >/dev/null 2>&1) || echo "note: could not install chromium; browser tests will be skipped"

lint: $(STAMP)
	$(PY) -m ruff check src tests examples benchmarks
	$(PY) -m ruff format --check src tests examples benchmarks
	$(PY) -m mypy

## make bench: the side-by-side benchmark suite (issue 6), ~25 min; rewrites docs/benchmarks.md
## and its plots. Installs the peers (benchmarks/requirements.txt), and wrk when root.
BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): $(STAMP) benchmarks/requirements.txt
	$(PY) -m pip install --quiet -r benchmarks/requirements.txt
	touch $(BENCH_STAMP)

wrk:
	@command -v wrk >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || apt-get install -y wrk >/dev/null 2>&1 || (apt-get update >/dev/null 2>&1 && apt-get install -y wrk >/dev/null 2>&1) || echo "note: could not install wrk (apt-get install -y wrk)"

bench: $(BENCH_STAMP) wrk
	$(PY) -m benchmarks.suite

## make bench-quick: flask-tasks vs Flask's official Celery pattern, small sizes, < 2 min;
## prints the ratios and writes nothing (CI shows it, never fails on it)
bench-quick: $(STAMP) wrk
	$(PY) -m benchmarks.suite --quick

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

## make faults-long: the fault tests left out of `make test` (tests/faults, marker faults_long)
faults-long: $(STAMP)
	$(PY) -m pytest -m faults_long tests/faults

## make soak: the load and soak suite run before a release (issue 7), ~10 min on 2 cores:
## 50,000 tasks on Redis with 200 status pollers, 5,000 on the embedded default with 50;
## fails when a check fails. SOAK_ARGS=--quick for a smoke run of under a minute.
soak: $(STAMP)
	$(PY) -m benchmarks.soak $(SOAK_ARGS)
