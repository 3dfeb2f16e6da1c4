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
	# MiniLM as ONNX, once per machine (~/.cache/foster/embeddings): bundles then render without torch
	$(BIN)/python -m foster.prompts.onnx_embed >/dev/null 2>&1 || echo "the ONNX embedding export failed: the first embedding call will retry it"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/foster demo

# Headless Chromium for the UI screenshot test, PostgreSQL for the scale-out test (Debian packages; root
# on CI and dev machines), promptfoo from npm for the promptfoo export test (its first install takes minutes).
# The tests start and stop their own servers on loopback (tests/servers.py).
test-deps:
	@command -v chromium >/dev/null 2>&1 || (command -v apt-get >/dev/null 2>&1 && \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ) || \
		echo "chromium not installed: the UI screenshot test will be skipped"
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || (command -v apt-get >/dev/null 2>&1 && \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql </dev/null >/dev/null) ) || \
		echo "postgresql not installed: the scale-out test will be skipped"
	@command -v promptfoo >/dev/null 2>&1 || ( (command -v npm >/dev/null 2>&1 || (command -v apt-get >/dev/null 2>&1 && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm </dev/null >/dev/null)) && \
		npm install -g --silent --no-fund --no-audit promptfoo </dev/null >/dev/null 2>&1 ) || \
		echo "promptfoo not installed: the promptfoo export test will fail"

test: install test-deps
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV)
