#!/usr/bin/env bash
# Build a real Kubernetes control plane for tests without Docker: kube-apiserver,
# kube-controller-manager, kube-scheduler (kwok fakes kubelets, not the scheduler), etcd
# and kwok, compiled from the Go module proxy into a versioned cache dir outside the work
# tree. Idempotent: per-binary stamps make a warm run return in milliseconds. Prints the
# directory that holds the binaries on its last line.
#
#   hack/envtest/build.sh            # build (or reuse) and print the bin dir
#   hack/envtest/build.sh --check    # exit 0 (and print the dir) only if nothing to build
#   KUBEBUILDER_ASSETS=/dir build.sh # binaries already in /dir are not built
#
# Versions can be overridden with LOOM_K8S_VERSION, LOOM_ETCD_VERSION, LOOM_KWOK_VERSION.
set -euo pipefail

K8S_VERSION="${LOOM_K8S_VERSION:-v1.33.13}"
ETCD_VERSION="${LOOM_ETCD_VERSION:-v3.6.8}"
KWOK_VERSION="${LOOM_KWOK_VERSION:-v0.7.0}"
KUBE_BINARIES=(kube-apiserver kube-controller-manager kube-scheduler)
BINARIES=("${KUBE_BINARIES[@]}" etcd kwok)

CACHE_ROOT="${LOOM_CACHE_DIR:-$HOME/.cache/loom}/envtest"
OUT="${CACHE_ROOT}/${K8S_VERSION}"

log() { printf '[envtest/build] %s\n' "$*" >&2; }

version_of() {
  case "$1" in
    etcd) echo "$ETCD_VERSION" ;;
    kwok) echo "$KWOK_VERSION" ;;
    *) echo "$K8S_VERSION" ;;
  esac
}

# True when $1 must be built: KUBEBUILDER_ASSETS (the envtest convention) lacks it and the
# cache has no binary stamped with the wanted version.
want() {
  [[ -n "${KUBEBUILDER_ASSETS:-}" && -x "${KUBEBUILDER_ASSETS}/$1" ]] && return 1
  [[ -x "${OUT}/$1" && "$(cat "${OUT}/.stamp-$1" 2>/dev/null)" == "$(version_of "$1")" ]] && return 1
  return 0
}

nothing_to_build() {
  local bin
  for bin in "${BINARIES[@]}"; do if want "$bin"; then return 1; fi; done
}

# The directory to use: the cache, or KUBEBUILDER_ASSETS when it alone has everything.
result_dir() {
  local bin
  for bin in "${BINARIES[@]}"; do
    [[ -n "${KUBEBUILDER_ASSETS:-}" && -x "${KUBEBUILDER_ASSETS}/${bin}" ]] || { echo "$OUT"; return; }
  done
  echo "$KUBEBUILDER_ASSETS"
}

if nothing_to_build; then result_dir; exit 0; fi
if [[ "${1:-}" == "--check" ]]; then
  log "binaries missing or stale in ${OUT}: a build is needed"
  exit 1
fi

mkdir -p "$OUT"
# Serialise concurrent builds (e.g. parallel test workers) on one lock.
if command -v flock >/dev/null 2>&1; then
  exec 9>"${CACHE_ROOT}/.build.lock"
  flock 9
  if nothing_to_build; then result_dir; exit 0; fi
fi

command -v go >/dev/null 2>&1 || { log "go is required (Go >= 1.24)"; exit 1; }

# One Go module and build cache shared with hack/node/build.sh (kubelet, kube-proxy).
# shellcheck source=hack/lib/kube-go.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/kube-go.sh"
kube_go_env

WORK="$(mktemp -d "${TMPDIR:-/tmp}/loom-envtest-build.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "${WORK}/bin"

build_kube() {
  local names=() bin
  for bin in "${KUBE_BINARIES[@]}"; do
    if want "$bin"; then names+=("$bin"); fi
  done
  log "building ${names[*]} @ ${K8S_VERSION} (cold: 7-10 min on 2 cores)"
  kube_go_build "$K8S_VERSION" "${WORK}/kube" "${WORK}/bin" "${names[@]}"
}

build_etcd() {
  local dir="${WORK}/etcd"
  mkdir -p "$dir"
  # etcd's server module replaces its sibling modules with ../ paths; pin them instead.
  cat >"${dir}/go.mod" <<GOMOD
module loom.dev/envtest-build/etcd

go 1.24.0

require (
	go.etcd.io/etcd/server/v3 ${ETCD_VERSION}
	go.etcd.io/etcd/api/v3 ${ETCD_VERSION}
	go.etcd.io/etcd/client/pkg/v3 ${ETCD_VERSION}
	go.etcd.io/etcd/client/v3 ${ETCD_VERSION}
	go.etcd.io/etcd/pkg/v3 ${ETCD_VERSION}
)
GOMOD
  log "building etcd @ ${ETCD_VERSION}"
  (cd "$dir" && go build -trimpath -ldflags "-s -w" -o "${WORK}/bin/etcd" go.etcd.io/etcd/server/v3)
}

build_kwok() {
  log "building kwok @ ${KWOK_VERSION}"
  GOBIN="${WORK}/bin" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@${KWOK_VERSION}"
}

start=$SECONDS
if want etcd; then build_etcd; fi
if want kwok; then build_kwok; fi
for bin in "${KUBE_BINARIES[@]}"; do
  if want "$bin"; then build_kube; break; fi
done
# Move into place and stamp only after every build succeeded.
for f in "${WORK}"/bin/*; do
  [[ -e "$f" ]] || continue
  bin="$(basename "$f")"
  mv -f "$f" "${OUT}/${bin}"
  version_of "$bin" >"${OUT}/.stamp-${bin}"
done
log "built in $((SECONDS - start))s"
result_dir
