#!/usr/bin/env bash
# Build Jaeger (all-in-one: OTLP receiver, in-memory storage, query HTTP API) from the Go module
# proxy into a versioned cache dir; the tracing tests start it and query it. Idempotent: a warm
# run returns in milliseconds. Prints the jaeger path on its last line.
#
#   hack/tracing/build.sh            # build (or reuse) and print the path
#   hack/tracing/build.sh --check    # exit 0 (and print the path) only if nothing to build
set -euo pipefail

VERSION="${LOOM_JAEGER_MODULE_VERSION:-v1.76.0}"
MODULE="github.com/jaegertracing/jaeger"
CACHE="${LOOM_CACHE_DIR:-$HOME/.cache/loom}"
OUT="${CACHE}/tracing/${VERSION}"
BIN="${OUT}/jaeger"

log() { printf '[tracing/build] %s\n' "$*" >&2; }

if [[ -x "$BIN" && "$(cat "${OUT}/.stamp" 2>/dev/null)" == "$VERSION" ]]; then
  echo "$BIN"
  exit 0
fi
if [[ "${1:-}" == "--check" ]]; then
  log "jaeger ${VERSION} is not built in ${OUT}"
  exit 1
fi
command -v go >/dev/null 2>&1 || { log "go is required (Go >= 1.24)"; exit 1; }

mkdir -p "$OUT"
# The Go module and build caches are the ones the Kubernetes builds use (common dependencies).
# shellcheck source=../lib/kube-go.sh
source "$(dirname "$0")/../lib/kube-go.sh"
kube_go_env

WORK="$(mktemp -d "${TMPDIR:-/tmp}/loom-jaeger-build.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
# A throwaway module, so Jaeger's own replace directives stay out.
printf 'module loom.dev/jaeger-build\n\ngo 1.24.0\n\nrequire %s %s\n' "$MODULE" "$VERSION" >"${WORK}/go.mod"

start=$SECONDS
log "building jaeger @ ${VERSION} (cold: several minutes on 2 cores)"
(cd "$WORK" && nice -n 10 go build -trimpath -ldflags "-s -w" -o "${WORK}/jaeger" "${MODULE}/cmd/jaeger")
mv -f "${WORK}/jaeger" "$BIN"
echo "$VERSION" >"${OUT}/.stamp"
log "built in $((SECONDS - start))s"
echo "$BIN"
