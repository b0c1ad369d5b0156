#!/usr/bin/env bash
# End-to-end run on a kind cluster (needs a Docker daemon, so not on the no-Docker dev
# machines, where `LOOM_E2E_PROVIDER=envtest` covers the same tests):
#   1. create a kind cluster (or reuse KIND_CLUSTER if it exists),
#   2. build the Loom image when a Dockerfile exists and load it into kind,
#   3. `helm upgrade --install` the chart at helm/loom (bundled NATS) and wait for it, then apply
#      config/samples/ and wait until every resource is Ready,
#   4. run tests/e2e against that cluster (LOOM_E2E_KUBECONFIG),
#   5. delete the cluster unless KEEP_CLUSTER=1.
#
#   hack/e2e-kind.sh [extra pytest args]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KIND_CLUSTER="${KIND_CLUSTER:-loom-e2e}"
KIND_NODE_IMAGE="${KIND_NODE_IMAGE:-kindest/node:v1.33.1}"
NAMESPACE="${LOOM_NAMESPACE:-loom-system}"
RELEASE="${LOOM_RELEASE:-loom}"
IMAGE_REPO="${LOOM_IMAGE_REPO:-loom}"
IMAGE_TAG="${LOOM_IMAGE_TAG:-e2e}"
PYTHON="${PYTHON:-${ROOT}/.venv/bin/python}"
KUBECONFIG_FILE="$(mktemp "${TMPDIR:-/tmp}/loom-kind.XXXXXX.kubeconfig")"

log() { printf '[e2e-kind] %s\n' "$*" >&2; }

for tool in docker kind; do
  command -v "$tool" >/dev/null 2>&1 || { log "$tool not on PATH"; exit 2; }
done
docker info >/dev/null 2>&1 || { log "Docker daemon not reachable"; exit 2; }

# helm and kubectl from the same cache the envtest harness uses.
TOOLS_BIN="$("${ROOT}/hack/envtest/tools.sh" | tail -n1)"
export PATH="${TOOLS_BIN}:${PATH}"

created=0
cleanup() {
  rm -f "$KUBECONFIG_FILE"
  if [[ "$created" == 1 && "${KEEP_CLUSTER:-0}" != 1 ]]; then
    kind delete cluster --name "$KIND_CLUSTER" || true
  fi
}
trap cleanup EXIT

if kind get clusters 2>/dev/null | grep -qx "$KIND_CLUSTER"; then
  log "reusing kind cluster ${KIND_CLUSTER}"
else
  log "creating kind cluster ${KIND_CLUSTER} (${KIND_NODE_IMAGE})"
  kind create cluster --name "$KIND_CLUSTER" --image "$KIND_NODE_IMAGE" --wait 180s
  created=1
fi
kind get kubeconfig --name "$KIND_CLUSTER" >"$KUBECONFIG_FILE"
export KUBECONFIG="$KUBECONFIG_FILE"

helm_image_args=()
if [[ -f "${ROOT}/Dockerfile" ]]; then
  log "building ${IMAGE_REPO}:${IMAGE_TAG} and loading it into kind"
  docker build -t "${IMAGE_REPO}:${IMAGE_TAG}" "$ROOT"
  kind load docker-image "${IMAGE_REPO}:${IMAGE_TAG}" --name "$KIND_CLUSTER"
  helm_image_args=(--set "image.repository=${IMAGE_REPO}" --set "image.tag=${IMAGE_TAG}"
    --set "image.pullPolicy=Never")
else
  log "no Dockerfile at the repo root: installing the chart's default image"
fi

log "helm upgrade --install ${RELEASE} helm/loom -n ${NAMESPACE}"
helm upgrade --install "$RELEASE" "${ROOT}/helm/loom" \
  --namespace "$NAMESPACE" --create-namespace \
  "${helm_image_args[@]}" \
  --set nats.bundled.enabled=true \
  --wait --timeout 5m
kubectl -n "$NAMESPACE" get pods -o wide

log "applying config/samples to namespace loom-demo and waiting for Ready"
kubectl create namespace loom-demo --dry-run=client -o yaml | kubectl apply -f -
kubectl -n loom-demo apply -f "${ROOT}/config/samples/"
kubectl -n loom-demo wait --for=condition=Ready --timeout=5m \
  workers --all
kubectl -n loom-demo wait --for=condition=Ready --timeout=5m \
  pipelines --all
kubectl -n loom-demo wait --for=condition=Ready --timeout=5m \
  routerpolicies --all
kubectl -n loom-demo wait --for=condition=Ready --timeout=5m \
  schedules --all
kubectl -n loom-demo get loom

log "running tests/e2e against kind"
cd "$ROOT"
LOOM_E2E_PROVIDER=kind LOOM_E2E_KUBECONFIG="$KUBECONFIG_FILE" \
  "$PYTHON" -m pytest tests/e2e -m k8s -q "$@"
