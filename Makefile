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

# Recipes print their own progress and results, not their shell lines.
.SILENT:

.PHONY: venv run up test test-setup test-cold lint generate envtest e2e-kind test-node test-keda \
  test-unit test-integration test-k8s test-packaging

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	began=$$SECONDS
	echo "[setup] venv: installing Loom into $(VENV) (first run compiles llama.cpp: about 10 min on 2 cores)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --progress-bar off -e '.[dev]'
	touch $@
	echo "[setup] venv: ready in $$((SECONDS - began))s"

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
	  --wait --timeout $(GOAL_TIMEOUT) --nats-url "$$nats_url" --run-dir $(RUN_DIR)

# Run the sample system in the foreground with the live view; Ctrl-C drains and stops.
up: venv
	$(BIN)/loom up config/samples

# Set up what the tests need (each step cached), lint, then every test: unit, integration,
# k8s, slow, and the e2e tests on one real node (needs root; hack/node/README.md). A skipped
# test fails the run (tests/conftest.py).
test: venv test-setup
	$(MAKE) --no-print-directory lint
	$(BIN)/python -m pytest -q -rfEs -p no:cacheprovider

# One tier of the test tree (docs/developing.md), after the setup steps it needs: pure unit tests;
# real nats-server, Redis and Jaeger; a real Kubernetes API server (the operator, helm install; the
# node harness's preflight test also wants the node step's tools, as `make test` installs them);
# the chart, image, Argo CD, Grafana and alert rules.
test-unit: venv
	$(BIN)/python -m pytest -q -rfEs -p no:cacheprovider tests/unit

test-integration: venv
	bash hack/test-setup.sh system tracing
	$(BIN)/python -m pytest -q -rfEs -p no:cacheprovider tests/integration

test-k8s: venv
	bash hack/test-setup.sh envtest tools
	$(BIN)/python -m pytest -q -rfEs -p no:cacheprovider tests/k8s

test-packaging: venv
	bash hack/test-setup.sh tools promtool
	$(BIN)/python -m pytest -q -rfEs -p no:cacheprovider tests/packaging

# The slow one-time steps (control plane, helm/kubectl, promtool, Debian packages, the real
# node's binaries and images), outside any test.
test-setup:
	LOOM_NATS_SERVER="$(abspath $(BIN))/nats-server" bash hack/test-setup.sh

# `make test` as a fresh machine (and CI) runs it: every cache, and the venv, in an empty
# temporary directory (LOOM_COLD_DIR to choose it; deleted afterwards unless KEEP_COLD=1).
# Debian packages already installed stay installed.
test-cold:
	cold="$${LOOM_COLD_DIR:-$$(mktemp -d "$${TMPDIR:-/tmp}/loom-cold.XXXXXX")}"
	[ "$${KEEP_COLD:-0}" = 1 ] || trap 'rm -rf "$$cold"' EXIT
	echo "[test-cold] caches and venv under $$cold"
	began=$$SECONDS
	LOOM_CACHE_DIR="$$cold/loom" PIP_CACHE_DIR="$$cold/pip" npm_config_cache="$$cold/npm" \
	  XDG_CACHE_HOME="$$cold/xdg" GOCACHE="$$cold/go-build" GOMODCACHE="$$cold/go-mod" \
	  $(MAKE) --no-print-directory test VENV="$$cold/venv"
	echo "[test-cold] make test passed from empty caches in $$((SECONDS - began))s"

lint: venv
	$(BIN)/ruff check runtime operator tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

# Every generated file from its source (models, kinds registry, dashboard definition); the drift
# tests fail when a committed copy differs from what these write.
generate: venv
	$(BIN)/python -m loom_operator.crdgen
	$(BIN)/python -m loom.api.docgen
	$(BIN)/python deploy/argocd/render.py
	$(BIN)/python deploy/grafana/dashboard.py
	echo "generated: crds/, helm/loom/crds/, docs/reference.md, deploy/argocd/, deploy/grafana/"

# The Docker-free control plane for the k8s tests (cached under ~/.cache/loom; cold build ~7-10 min).
envtest:
	bash hack/test-setup.sh envtest tools

# Only the e2e suite, all of it on one real node (containerd + kubelet + kube-proxy + CoreDNS
# joined to the envtest control plane; needs root): the node tests `make test` runs too, plus
# tests/e2e/test_cluster_behaviour.py on the real node instead of kwok.
test-node: venv
	LOOM_NATS_SERVER="$(abspath $(BIN))/nats-server" bash hack/test-setup.sh envtest tools node
	LOOM_E2E_PROVIDER=node $(BIN)/python -m pytest -q -rfEs -p no:cacheprovider tests/e2e

# A real KEDA (operator + metrics API server, built from the Go module proxy) scaling a Worker tier
# from the ScaledObject the operator renders, on the test control plane. Not part of `make test`:
# KEDA's cold build (every scaler's cloud SDK) is longer than the rest of the setup together.
test-keda: venv
	LOOM_NATS_SERVER="$(abspath $(BIN))/nats-server" bash hack/test-setup.sh envtest tools keda
	$(BIN)/python -m pytest -q -rfEs -p no:cacheprovider -m keda tests/k8s/operator

# The same e2e suite on a kind cluster (needs Docker and kind).
e2e-kind: venv
	bash hack/e2e-kind.sh
