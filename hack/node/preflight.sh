#!/usr/bin/env bash
# Can this machine run the node tier (tests/k8s/node.py)? Prints every missing piece on stderr
# and exits 1, or exits 0 silently. Run by `hack/test-setup.sh node` before anything is
# installed or built, and by the node harness before it starts, so a machine that cannot run
# a real node fails the test run with the reason instead of a containerd or kubelet log.
#
#   hack/node/preflight.sh           # kernel, privileges, cgroups, networking
#   hack/node/preflight.sh --tools   # also the commands the harness runs (after installation)
set -uo pipefail

problems=()
miss() { problems+=("$*"); }

[[ "$(id -u)" == 0 ]] ||
  miss "not root (uid $(id -u)): containerd, the kubelet, iptables and network namespaces need root; run the tests as root"

cg=/sys/fs/cgroup
if [[ ! -d "$cg" ]]; then
  miss "no ${cg}: the kubelet and runc need a mounted cgroup filesystem"
elif [[ -e "${cg}/cgroup.controllers" ]]; then
  miss "${cg} is cgroup v2 only: tests/k8s/node.py prepares cgroup v1 hierarchies (cpu, memory, pids, ...) and was not made for v2"
else
  for controller in cpu cpuacct cpuset memory pids devices freezer; do
    [[ -e "${cg}/${controller}/cgroup.procs" ]] || miss "cgroup v1 controller '${controller}' not mounted at ${cg}/${controller}"
  done
  if [[ "$(id -u)" == 0 && -d "${cg}/memory" ]]; then
    probe="${cg}/memory/loom-preflight-$$"
    if mkdir "$probe" 2>/dev/null; then rmdir "$probe"; else miss "cannot create cgroups under ${cg}/memory (read-only cgroup mount?)"; fi
  fi
fi

grep -qw overlay /proc/filesystems 2>/dev/null ||
  miss "no overlay filesystem in /proc/filesystems (containerd's overlayfs snapshotter; modprobe overlay)"
[[ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]] ||
  miss "no /proc/sys/net/bridge/bridge-nf-call-iptables (Services from pods on the CNI bridge; modprobe br_netfilter)"
[[ -w /proc/sys/net/ipv4/ip_forward || "$(id -u)" != 0 ]] ||
  miss "/proc/sys/net/ipv4/ip_forward is not writable (pods are routed through the host)"

if [[ "${1:-}" == "--tools" ]]; then
  for cmd in containerd runc ctr ip iptables iptables-save iptables-restore ip6tables-save ip6tables-restore conntrack; do
    command -v "$cmd" >/dev/null 2>&1 || miss "command '${cmd}' not found (hack/test-setup.sh node installs it)"
  done
  for plugin in bridge host-local portmap; do
    [[ -x "/usr/lib/cni/${plugin}" ]] || miss "CNI plugin /usr/lib/cni/${plugin} not found (Debian containernetworking-plugins)"
  done
  if command -v iptables >/dev/null 2>&1 && [[ "$(id -u)" == 0 ]]; then
    iptables -t nat -S >/dev/null 2>&1 || miss "iptables cannot read the nat table (kube-proxy and the CNI bridge need it)"
  fi
fi

if [[ ${#problems[@]} -gt 0 ]]; then
  printf 'this machine cannot run the real node of the test suite:\n' >&2
  printf '  - %s\n' "${problems[@]}" >&2
  exit 1
fi
