#!/usr/bin/env bash
# Build Prometheus's promtool (checks and unit-tests the chart's alert rules and the dashboard's
# queries) from the Go module proxy into a versioned cache dir. Idempotent: a warm run returns in
# milliseconds. Prints the promtool path on its last line.
#
#   hack/promtool/build.sh            # build (or reuse) and print the path
#   hack/promtool/build.sh --check    # exit 0 (and print the path) only if nothing to build
#
# Prometheus 3.x is published as module version v0.3xx. `remove_all_sd` leaves the service
# discovery plugins (cloud SDKs) out: promtool's rule checks and rule unit tests do not use
# them, and they are most of a cold build.
set -euo pipefail

VERSION="${LOOM_PROMETHEUS_MODULE_VERSION:-v0.315.0}"
MODULE="github.com/prometheus/prometheus"
CACHE="${LOOM_CACHE_DIR:-$HOME/.cache/loom}"
OUT="${CACHE}/promtool/${VERSION}"
BIN="${OUT}/promtool"

log() { printf '[promtool/build] %s\n' "$*" >&2; }

if [[ -x "$BIN" && "$(cat "${OUT}/.stamp" 2>/dev/null)" == "$VERSION" ]]; then
  echo "$BIN"
  exit 0
fi
if [[ "${1:-}" == "--check" ]]; then
  log "promtool ${VERSION} is not built in ${OUT}"
  exit 1
fi
command -v go >/dev/null 2>&1 || { log "go is required (Go >= 1.24)"; exit 1; }

mkdir -p "$OUT"
# The Go module and build caches are the ones the Kubernetes builds use (common dependencies).
# shellcheck source=../lib/kube-go.sh
source "$(dirname "$0")/../lib/kube-go.sh"
kube_go_env

WORK="$(mktemp -d "${TMPDIR:-/tmp}/loom-promtool-build.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
# A throwaway module, so Prometheus's own replace directives stay out.
printf 'module loom.dev/promtool-build\n\ngo 1.24.0\n\nrequire %s %s\n' "$MODULE" "$VERSION" >"${WORK}/go.mod"

start=$SECONDS
log "building promtool @ ${VERSION} (cold: several minutes on 2 cores)"
(cd "$WORK" && go build -trimpath -tags remove_all_sd -ldflags "-s -w" -o "${WORK}/promtool" "${MODULE}/cmd/promtool")
"${WORK}/promtool" --version >&2
mv -f "${WORK}/promtool" "$BIN"
echo "$VERSION" >"${OUT}/.stamp"
log "built in $((SECONDS - start))s"
echo "$BIN"
