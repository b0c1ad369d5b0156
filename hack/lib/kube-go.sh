# shellcheck shell=bash
# Build Kubernetes binaries (k8s.io/kubernetes/cmd/...) from the Go module proxy, sourced by
# hack/envtest/build.sh and hack/node/build.sh. Both use ONE module cache and ONE build cache
# (${LOOM_CACHE_DIR:-~/.cache/loom}/envtest/go), so the node's kubelet and kube-proxy reuse
# almost every package the control plane build already compiled.
#
#   kube_go_env                          # export GOMODCACHE, GOCACHE, GOFLAGS, ...
#   kube_go_build VERSION WORKDIR OUTDIR cmd...   # e.g. kube_go_build v1.33.13 /tmp/w /tmp/o kubelet

KUBE_GO_CACHE="${LOOM_CACHE_DIR:-$HOME/.cache/loom}/envtest/go"

kube_go_env() {
  export GOMODCACHE="${KUBE_GO_CACHE}/mod"
  export GOCACHE="${KUBE_GO_CACHE}/build"
  export GOPATH="${KUBE_GO_CACHE}/path"
  # -modcacherw keeps the module cache deletable; -mod=mod lets go fill go.sum itself.
  export GOFLAGS="-mod=mod -modcacherw -buildvcs=false"
  export GOTOOLCHAIN=local
  export CGO_ENABLED=0
  export GOPROXY="${GOPROXY:-https://proxy.golang.org,direct}"
}

# Build k8s.io/kubernetes/cmd/<name> for each name into OUTDIR.
kube_go_build() {
  local version="$1" dir="$2" out="$3"
  shift 3
  local minor="${version#v1.}"
  minor="${minor%%.*}"
  local staging_version="v0.${version#v1.}"
  local gomod staging m
  mkdir -p "$dir" "$out"
  # k8s.io/kubernetes replaces each staging module with ./staging/...; outside its own
  # tree those replaces are ignored, so mirror them with the published v0.Y.Z twins
  # (kubernetes/kubernetes#79384). The list comes from this version's own go.mod.
  gomod="$(cd "$dir" && go mod download -json "k8s.io/kubernetes@${version}" |
    sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p')"
  [[ -f "$gomod" ]] || { printf 'could not download k8s.io/kubernetes@%s\n' "$version" >&2; return 1; }
  staging="$(sed -n 's#^[[:space:]]*\(k8s.io/[^[:space:]]*\) => \./staging/.*#\1#p' "$gomod")"
  [[ -n "$staging" ]] || { printf 'no staging replaces found in %s\n' "$gomod" >&2; return 1; }
  {
    printf 'module loom.dev/envtest-build/kube\n\ngo 1.24.0\n\ngodebug default=go1.24\n\n'
    printf 'require k8s.io/kubernetes %s\n\nreplace (\n' "$version"
    for m in $staging; do printf '\t%s => %s %s\n' "$m" "$m" "$staging_version"; done
    printf ')\n'
  } >"${dir}/go.mod"
  local targets=() name
  for name in "$@"; do targets+=("k8s.io/kubernetes/cmd/${name}"); done
  # Same version stamping as kubernetes' hack/lib/version.sh, so /version is truthful.
  local x="" pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    x+=" -X ${pkg}.gitVersion=${version} -X ${pkg}.gitMajor=1 -X ${pkg}.gitMinor=${minor}"
    x+=" -X ${pkg}.gitTreeState=clean -X ${pkg}.buildDate=1970-01-01T00:00:00Z"
  done
  (cd "$dir" && go build -trimpath -ldflags "-s -w${x}" -o "${out}/" "${targets[@]}")
}
