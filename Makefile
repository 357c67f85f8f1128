# make demo: set up and run the whole pipeline on the bundled example.
# make test: lint, type-check and run the test suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint typecheck unit bench clean

# the stamp says the venv was made, not that it still runs: one whose Python has gone since (uninstalled,
# or upgraded away) loses its stamp here, so that the rule below makes it again
ifneq ($(wildcard $(STAMP)),)
ifneq ($(shell $(BIN)/python -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1 && echo ok),ok)
$(shell rm -f $(STAMP))
endif
endif

# a .venv whose Python or pip does not run (made by a Python since removed or older than 3.11, its
# creation cut short by Ctrl-C or failed for want of python3-venv) is made again from scratch
$(STAMP): pyproject.toml
	@{ $(BIN)/python -c 'import sys; sys.exit(sys.version_info < (3, 11))' && \
	    $(BIN)/python -m pip --version; } >/dev/null 2>&1 || $(PYTHON) -m venv --clear $(VENV) || { \
	    echo "python3 -m venv failed; on Debian install it with: apt-get install -y python3-venv" >&2; \
	    if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null && \
	        $(PYTHON) -m venv --clear $(VENV); else exit 1; fi; }
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

# the demo's tools: git (the example becomes a repository), bubblewrap (its build step runs sandboxed),
# zstd (the exported archive); installed with apt-get when missing and run as root, else named
DEMO_TOOLS := git:git bwrap:bubblewrap zstd:zstd

demo: $(STAMP)
	@missing=""; for pair in $(DEMO_TOOLS); do \
	    command -v "$${pair%%:*}" >/dev/null || missing="$$missing $${pair##*:}"; done; \
	if [ -n "$$missing" ]; then \
	    if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq $$missing >/dev/null; \
	    else echo "the demo needs:$$missing (apt-get install -y$$missing)" >&2; exit 1; fi; fi
	@# optional: a throwaway OCI registry for the push / pull step (skipped without it)
	@command -v docker-registry >/dev/null || [ "$$(id -u)" != 0 ] || \
	    apt-get install -y -qq docker-registry >/dev/null 2>&1 || true
	@PATH="$(CURDIR)/$(BIN):$$PATH" bash examples/demo.sh

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy --strict src tests bench

unit: $(STAMP)
	$(BIN)/pytest -q -n 2

test: lint typecheck unit

bench: $(STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
