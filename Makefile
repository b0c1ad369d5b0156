# Loom: `make run` (the demo end to end on this machine), `make test` (every test), `make lint`.
SHELL := /bin/bash
.ONESHELL:
.SHELLFLAGS := -euo pipefail -c

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUN_DIR ?= .loom/run
READY_TIMEOUT ?= 600
GOAL_TIMEOUT ?= 900
# llama.cpp compiles on install; a portable CPU baseline instead of -march=native, because
# some VMs advertise CPU features (e.g. AMX) that then fault at run time.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF

.PHONY: venv run up test lint envtest e2e-kind

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@

# Start the sample system in the background, submit the sample document, print the result
# and the per-stage timeline, then drain and stop.
run: venv
	mkdir -p $(RUN_DIR)
	log=$(RUN_DIR)/up.log
	$(BIN)/loom up config/samples --no-view --run-dir $(RUN_DIR) --nats-port 0 --nats-monitor-port 0 \
	  > "$$log" 2>&1 &
	up=$$!
	stop() { kill -INT $$up 2>/dev/null || true; wait $$up || true; }
	trap stop EXIT
	echo "starting loom up (logs: $$log) ..."
	if ! $(BIN)/loom status --run-dir $(RUN_DIR) --wait-ready $(READY_TIMEOUT); then
	  tail -n 40 "$$log"; exit 1
	fi
	nats_url=$$($(BIN)/python -c "import json,sys; print(json.load(open(sys.argv[1]))['nats_url'])" \
	  $(RUN_DIR)/state.json)
	$(BIN)/loom submit "Analyse this document" --pipeline doc-analysis \
	  --context text=@config/samples/example.txt \
	  --wait --timeout $(GOAL_TIMEOUT) --nats-url "$$nats_url"

# Run the sample system in the foreground with the live view; Ctrl-C drains and stops.
up: venv
	$(BIN)/loom up config/samples

# Lint, then every test (unit, integration, k8s, slow), with what they need set up first.
test: venv
	if [ -f hack/envtest/build.sh ]; then
	  assets="$$(bash hack/envtest/build.sh | tail -n 1)"
	  export KUBEBUILDER_ASSETS="$$assets"
	fi
	if [ -f hack/envtest/tools.sh ]; then
	  tools="$$(bash hack/envtest/tools.sh | tail -n 1)"
	  export PATH="$$tools:$$PATH"
	fi
	if ! command -v redis-server >/dev/null 2>&1; then
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo="sudo"
	  $$sudo apt-get update -qq && $$sudo apt-get install -y -qq redis-server
	fi
	$(MAKE) --no-print-directory lint
	$(BIN)/python -m pytest -q -rfEs -p no:cacheprovider

lint: venv
	$(BIN)/ruff check runtime operator tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

# The Docker-free control plane for the k8s tests (cached under ~/.cache/loom; cold build ~7-10 min).
envtest:
	bash hack/envtest/build.sh && bash hack/envtest/tools.sh

# The same e2e suite on a kind cluster (needs Docker and kind).
e2e-kind: venv
	bash hack/e2e-kind.sh
