#!/usr/bin/env bash
# Build KEDA's operator and metrics API server (github.com/kedacore/keda/v2) from the Go module
# proxy into a versioned cache dir, for tests/k8s/operator/test_keda_real.py: a real KEDA scaling a
# Worker tier from the ScaledObject the operator renders. Idempotent: a warm run returns in
# milliseconds. Prints the output directory (keda-operator, keda-adapter, crds/) on its last line.
#
#   hack/keda/build.sh            # build (or reuse) and print the directory
#   hack/keda/build.sh --check    # exit 0 (and print the directory) only if nothing to build
#
# KEDA links every scaler it supports (cloud SDKs included) into one binary, so the cold build is
# the largest of the test setup; it has its own Go caches under the same cache root.
set -euo pipefail

VERSION="${LOOM_KEDA_VERSION:-v2.21.0}"
MODULE="github.com/kedacore/keda/v2"
CACHE="${LOOM_CACHE_DIR:-$HOME/.cache/loom}"
OUT="${CACHE}/keda/${VERSION}"

log() { printf '[keda/build] %s\n' "$*" >&2; }

if [[ -x "${OUT}/keda-operator" && -x "${OUT}/keda-adapter" && "$(cat "${OUT}/.stamp" 2>/dev/null)" == "$VERSION" ]]; then
  echo "$OUT"
  exit 0
fi
if [[ "${1:-}" == "--check" ]]; then
  log "KEDA ${VERSION} is not built in ${OUT}"
  exit 1
fi
command -v go >/dev/null 2>&1 || { log "go is required (Go >= 1.26)"; exit 1; }

export GOMODCACHE="${CACHE}/keda/go/mod" GOCACHE="${CACHE}/keda/go/build" GOPATH="${CACHE}/keda/go/path"
export GOFLAGS="-mod=mod -modcacherw -buildvcs=false" GOTOOLCHAIN=local CGO_ENABLED=0
export GOPROXY="${GOPROXY:-https://proxy.golang.org,direct}"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/loom-keda-build.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
# A throwaway module requiring KEDA; its own go.mod's replace lines do not apply outside its tree,
# so they are copied (today one: a license fix of nexus-proto-annotations).
gomod="$(cd "$WORK" && printf 'module loom.dev/keda-build\n' >go.mod &&
  go mod download -json "${MODULE}@${VERSION}" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p')"
[[ -f "$gomod" ]] || { log "could not download ${MODULE}@${VERSION}"; exit 1; }
goversion="$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$gomod")"
{
  printf 'module loom.dev/keda-build\n\ngo %s\n\nrequire %s %s\n\n' "$goversion" "$MODULE" "$VERSION"
  sed -n '/^replace /p' "$gomod"
  sed -n '/^replace ($/,/^)$/p' "$gomod"
} >"${WORK}/go.mod"

start=$SECONDS
log "building keda-operator and keda-adapter @ ${VERSION} (cold: the longest setup step)"
(cd "$WORK" && go build -trimpath -ldflags "-s -w" -o "${WORK}/bin/" "${MODULE}/cmd/operator" "${MODULE}/cmd/adapter")
mkdir -p "${OUT}/crds"
mv -f "${WORK}/bin/operator" "${OUT}/keda-operator"
mv -f "${WORK}/bin/adapter" "${OUT}/keda-adapter"
src="$(cd "$WORK" && go list -m -f '{{.Dir}}' "$MODULE")"
cp -f "${src}/config/crd/bases/"*.yaml "${OUT}/crds/"
chmod -R u+w "${OUT}/crds"
echo "$VERSION" >"${OUT}/.stamp"
log "built in $((SECONDS - start))s"
echo "$OUT"
