# Two commands do all the set-up: `make demo` and `make test` each create or refresh .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.foster-installed
export LITELLM_LOCAL_MODEL_COST_MAP := True
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export ANONYMIZED_TELEMETRY := False

.PHONY: install test-deps demo test bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip wheel setuptools
	# torch first, pinned, so the CPU wheel is taken instead of several GB of CUDA packages
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev,scale]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/foster demo

# Headless Chromium for the UI screenshot test, PostgreSQL for the scale-out test (Debian packages; root
# on CI and dev machines). The tests start and stop their own servers on loopback (tests/servers.py).
test-deps:
	@command -v chromium >/dev/null 2>&1 || (command -v apt-get >/dev/null 2>&1 && \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ) || \
		echo "chromium not installed: the UI screenshot test will be skipped"
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || (command -v apt-get >/dev/null 2>&1 && \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql </dev/null >/dev/null) ) || \
		echo "postgresql not installed: the scale-out test will be skipped"

test: install test-deps
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV)
