# The two commands: `make demo` and `make test`. Both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# This environment sets PYTHONDONTWRITEBYTECODE, so every router and sitectl process the
# tests start would compile the package again (0.1-0.2 s of CPU each): compile it once.
COMPILE := $(BIN)/python -m compileall -q router sitectl certs tests >/dev/null

demo: $(STAMP)
	$(COMPILE)
	$(BIN)/python examples/demo.py

# pytest on two workers (pytest-xdist), one test file each at a time, so that a file's
# module-scoped routers are started once; files in collection order (not largest first),
# so that a long one that mostly waits, like the lossy netns transfer, is not left last.
PYTEST_WORKERS := -n 2 --dist loadfile --no-loadscope-reorder

test: $(STAMP)
	$(COMPILE)
	$(BIN)/ruff check router sitectl certs tests bench examples
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q $(PYTEST_WORKERS)

lint: $(STAMP)
	$(BIN)/ruff check router sitectl certs tests bench examples
	$(BIN)/mypy
	$(BIN)/lint-imports

# Debian packages the benchmarks drive (command -> package), installed when missing and root.
BENCH_TOOLS := stunnel4:stunnel4 iperf3:iperf3 wrk:wrk h2load:nghttp2-client nginx:nginx \
  pgbench:postgresql-client redis-benchmark:redis-tools

bench: $(STAMP)
	@PATH="$$PATH:/usr/sbin"; \
	  missing="$$(for t in $(BENCH_TOOLS); do command -v $${t%%:*} >/dev/null || \
	    echo $${t#*:}; done)"; [ -z "$$missing" ] || \
	  { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; } || \
	  echo "bench: install" $$missing "for the full comparison"
	$(BIN)/python bench/bench.py
	$(BIN)/python bench/http_bench.py
	$(BIN)/python bench/records_bench.py
	$(BIN)/python bench/db_bench.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .import_linter_cache
