"""One real Kubernetes node for the e2e tests: real pods running the project's image.

``NodeCluster`` starts the envtest control plane (:class:`tests.k8s.envtest.ControlPlane`,
its API server also reachable from pods) and joins one real node to it: containerd (CRI,
runc, overlayfs) + the kubelet (cgroupfs) + CNI bridge/host-local/portmap + kube-proxy
(iptables), with the images from ``hack/node/build.sh`` preloaded into containerd, and
CoreDNS as the cluster DNS (``kube-dns`` at 10.96.0.10).

Every host change is recorded when it is made and undone on :meth:`NodeCluster.stop`, in
reverse order, even after a failed start: processes, pod cgroups, mounts, network
namespaces, links, iptables chains and policy, sysctls. ``hack/node/README.md`` lists them.
Needs root; the binaries and images come from ``hack/node/build.sh`` (run by
``hack/test-setup.sh node``); nothing is built here.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from loom.ports import free_port
from tests.k8s.envtest import REPO_ROOT, Component, Components, ControlPlane, wait_until
from tests.support import helm_bin

BUILD_SCRIPT = REPO_ROOT / "hack" / "node" / "build.sh"
PREFLIGHT_SCRIPT = REPO_ROOT / "hack" / "node" / "preflight.sh"
NODE_NAME = "loom-node-0"
POD_SUBNET = "10.244.1.0/24"
BRIDGE = "loomcni0"
CLUSTER_DNS = "10.96.0.10"
NETNS_DIR = Path("/var/run/netns")
CGROUP_FS = Path("/sys/fs/cgroup")
CNI_BIN_DIR = Path("/usr/lib/cni")
# Sysctls the kubelet, kube-proxy, the CNI bridge plugin or this harness may write.
SYSCTLS = (
    "net.ipv4.ip_forward",
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
    "net.ipv4.conf.all.route_localnet",
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
    "net.netfilter.nf_conntrack_max",
    "net.netfilter.nf_conntrack_tcp_timeout_established",
    "net.netfilter.nf_conntrack_tcp_timeout_close_wait",
)
OUR_CHAIN = re.compile(r"^(KUBE-|CNI-)")
START_TIMEOUT = 240.0
# One node per host: the bridge, the KUBE-*/CNI-* chains and the sysctls are host-wide, and a
# node's teardown removes them. A second test session waits for the first one's node to go.
HOST_LOCK = Path("/run/loom-node.lock")
HOST_LOCK_WAIT = 240.0


class NodeError(RuntimeError):
    """The node could not be started or driven."""


def find_node_build() -> Path:
    """The output dir of ``hack/node/build.sh``, asked with ``--check`` (it builds nothing)."""
    # The NATS image is keyed on the nats-server of the venv running the tests (as `make` passes it).
    nats_server = os.environ.get("LOOM_NATS_SERVER") or str(Path(sys.executable).parent / "nats-server")
    env = {**os.environ, "LOOM_NATS_SERVER": nats_server}
    check = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
    if check.returncode != 0:
        raise NodeError(
            "node binaries/images not built: run `bash hack/test-setup.sh node` "
            f"(needs root).\n{check.stderr.strip()}"
        )
    return Path(check.stdout.strip().splitlines()[-1])


def preflight() -> None:
    """Fail with every reason this machine cannot run the node (``hack/node/preflight.sh``)."""
    check = subprocess.run(
        ["bash", str(PREFLIGHT_SCRIPT), "--tools"], capture_output=True, text=True, timeout=60, check=False
    )
    if check.returncode != 0:
        raise NodeError(check.stderr.strip() or f"{PREFLIGHT_SCRIPT} failed with status {check.returncode}")


def read_images_env(build_dir: Path) -> dict[str, str]:
    """The image references build.sh wrote (PAUSE_IMAGE, LOOM_IMAGE, NATS_IMAGE, COREDNS_IMAGE)."""
    pairs = (line.split("=", 1) for line in (build_dir / "images.env").read_text().splitlines() if line)
    return {k: v for k, v in pairs}


def node_ip() -> str:
    """The host's primary IPv4 address (source of its default route): the node's InternalIP."""
    out = subprocess.run(
        ["ip", "-4", "-o", "route", "get", "1.1.1.1"], capture_output=True, text=True, check=True
    ).stdout
    match = re.search(r"\bsrc (\S+)", out)
    if not match:
        raise NodeError(f"no source address in `ip route get`: {out!r}")
    return match.group(1)


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def _run(argv: list[str], *, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=timeout)


def _mounts_under(root: Path) -> list[str]:
    """Mount points at or below ``root``, deepest (latest) first."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == str(root) or point.startswith(f"{root}/"):
            points.append(point)
    return list(reversed(points))


def strip_our_chains(saved: str) -> str:
    """``iptables-save`` output without the KUBE-*/CNI-* chains and every rule naming one.

    Applied with ``iptables-restore`` it removes what kube-proxy, the kubelet and the CNI
    plugins added and keeps everyone else's rules as they are now.
    """
    kept = []
    for line in saved.splitlines():
        if line.startswith(":") and OUR_CHAIN.match(line[1:]):
            continue
        if line.startswith("-A "):
            words = line.split()
            chain = words[1]
            target = words[words.index("-j") + 1] if "-j" in words else ""
            goto = words[words.index("-g") + 1] if "-g" in words else ""
            if OUR_CHAIN.match(chain) or OUR_CHAIN.match(target) or OUR_CHAIN.match(goto):
                continue
        kept.append(line)
    return "\n".join(kept) + "\n"


@dataclass
class HostChanges:
    """What the node changed on the host, recorded before each change, undone in reverse."""

    sysctls: dict[str, str] = field(default_factory=dict)
    netns_before: set[str] = field(default_factory=set)
    netns_dir_created: bool = False
    forward_policy: str = ""
    cgroup_dirs: list[Path] = field(default_factory=list)
    undo_log: list[str] = field(default_factory=list)

    def record_sysctls(self) -> None:
        for name in SYSCTLS:
            path = _sysctl_path(name)
            with contextlib.suppress(OSError):
                self.sysctls[name] = path.read_text().strip()

    def set_sysctl(self, name: str, value: str) -> None:
        _sysctl_path(name).write_text(value)

    def restore_sysctls(self) -> None:
        for name, old in self.sysctls.items():
            path = _sysctl_path(name)
            try:
                if path.read_text().strip() != old:
                    path.write_text(old)
                    self.undo_log.append(f"sysctl {name} restored to {old}")
            except OSError as exc:
                self.undo_log.append(f"sysctl {name}: could not restore {old!r}: {exc}")


_LIVE: set[NodeCluster] = set()


def _stop_live_nodes() -> None:
    for node in list(_LIVE):
        with contextlib.suppress(Exception):
            node.stop()


# Registered after envtest's own hook, so it runs first: the node goes before its control plane.
atexit.register(_stop_live_nodes)


def _install_sigterm_teardown() -> None:
    """On SIGTERM (CI timeouts), undo the node's host changes, then chain to the previous handler.

    Python runs no atexit hooks on a fatal signal. Installed over envtest's handler (which then
    stops any control plane still running) from the main thread only, once per live node set.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)
    if getattr(previous, "__name__", "") == "_node_on_sigterm":
        return

    def _node_on_sigterm(signum: int, frame: Any) -> None:
        _stop_live_nodes()
        if callable(previous):
            previous(signum, frame)
        else:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, _node_on_sigterm)


class NodeCluster(Components):
    """The envtest control plane plus one real node; a context manager.

    ``kubeconfig`` is cluster-admin; ``images`` maps PAUSE/LOOM/NATS/COREDNS_IMAGE to the
    references preloaded into containerd; ``node_ip`` is the node's InternalIP.
    """

    error = NodeError

    def __init__(self, *, start_timeout: float = START_TIMEOUT, keep_dir: bool | None = None) -> None:
        self.start_timeout = start_timeout
        self.keep_dir = keep_dir if keep_dir is not None else os.environ.get("LOOM_NODE_KEEP") == "1"
        self.build_dir = find_node_build()
        self.images = read_images_env(self.build_dir)
        self.node_ip = node_ip()
        self.plane: ControlPlane | None = None
        self.dir: Path | None = None
        self.components: list[Component] = []
        self.changes = HostChanges()
        self.startup_seconds = 0.0
        self.cgroup_root = ""
        self.stopped = False
        self._host_lock: IO[str] | None = None

    # ---------------------------------------------------------------- lifecycle

    def __enter__(self) -> NodeCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def kubeconfig(self) -> Path:
        assert self.plane is not None
        return self.plane.admin_kubeconfig

    def start(self) -> NodeCluster:
        """Start control plane, containerd, kubelet, kube-proxy and CoreDNS; wait for Ready."""
        preflight()
        began = time.monotonic()
        self._lock_host()
        self.dir = Path(tempfile.mkdtemp(prefix="loom-node-"))
        self.cgroup_root = f"/{self.dir.name}"
        try:
            # Pods reach the API server through the `kubernetes` Service, whose endpoint is
            # the advertise address: the node's address, not loopback.
            self.plane = ControlPlane(
                controllers=True,
                extra_apiserver_args=[
                    "--bind-address=0.0.0.0",
                    f"--advertise-address={self.node_ip}",
                    # Logs and exec: reach the kubelet by address (the node name is not in DNS).
                    "--kubelet-preferred-address-types=InternalIP",
                ],
            )
            self.plane.start()
            _LIVE.add(self)
            _install_sigterm_teardown()
            self._prepare_host()
            self._start_containerd()
            self._preload_images()
            self._start_kubelet()
            self._start_kube_proxy()
            self._wait_node_ready()
            self._drop_fake_node()
            self._deploy_coredns()
        except BaseException:
            report = self.failure_report()
            self.keep_dir = True
            self.stop()
            raise NodeError(f"node failed to start (logs kept in {self.dir}):\n{report}") from None
        self.startup_seconds = time.monotonic() - began
        return self

    # ---------------------------------------------------------------- host

    def _lock_host(self) -> None:
        """Hold the host's node lock (released when this process ends or the node stops)."""
        HOST_LOCK.parent.mkdir(parents=True, exist_ok=True)
        handle = HOST_LOCK.open("a+")
        deadline = time.monotonic() + HOST_LOCK_WAIT
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    handle.seek(0)
                    holder = handle.read().strip() or "unknown"
                    handle.close()
                    raise NodeError(
                        f"another test node runs on this host (pid {holder}, lock {HOST_LOCK}); "
                        f"waited {HOST_LOCK_WAIT:.0f}s: one node per host"
                    ) from None
                time.sleep(1.0)
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._host_lock = handle

    def _unlock_host(self) -> None:
        if self._host_lock is not None:
            self._host_lock.close()
            self._host_lock = None

    def _prepare_host(self) -> None:
        assert self.dir is not None
        changes = self.changes
        changes.record_sysctls()
        changes.netns_before = set(os.listdir(NETNS_DIR)) if NETNS_DIR.exists() else set()
        changes.netns_dir_created = not NETNS_DIR.exists()
        policy = re.search(r"^:FORWARD (\S+)", _run(["iptables-save", "-t", "filter"]).stdout, re.M)
        changes.forward_policy = policy.group(1) if policy else "ACCEPT"
        # Routing between pods and to Services (kube-proxy DNATs bridged traffic too).
        changes.set_sysctl("net.ipv4.ip_forward", "1")
        changes.set_sysctl("net.bridge.bridge-nf-call-iptables", "1")
        # The kubelet's cgroup root, one per node, so teardown removes exactly ours.
        for controller in sorted(os.listdir(CGROUP_FS)):
            base = CGROUP_FS / controller
            if controller == "unified" or base.is_symlink() or not (base / "cgroup.procs").exists():
                continue
            path = base / self.cgroup_root.lstrip("/")
            path.mkdir(exist_ok=True)
            changes.cgroup_dirs.append(path)
            if controller == "cpuset":
                for knob in ("cpuset.cpus", "cpuset.mems"):
                    (path / knob).write_text((base / knob).read_text())

    def _start_containerd(self) -> None:
        assert self.dir is not None
        root = self.dir / "containerd"
        (self.dir / "cni" / "net.d").mkdir(parents=True)
        conflist = {
            "cniVersion": "0.4.0",
            "name": "loom-node",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    "ipMasq": True,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_SUBNET}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(self.dir / "cni" / "ipam"),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }
        (self.dir / "cni" / "net.d" / "10-loom.conflist").write_text(json.dumps(conflist, indent=2))
        self.containerd_socket = self.dir / "containerd.sock"
        config = f"""version = 2
root = "{root}/root"
state = "{root}/state"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "{self.containerd_socket}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{self.images["PAUSE_IMAGE"]}"
  # The sandbox lacks CAP_SYS_RESOURCE: never raise a container's oom_score_adj.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{self.dir / "cni" / "net.d"}"
"""
        (self.dir / "containerd.toml").write_text(config)
        containerd = self._component(
            "containerd", ["containerd", "--config", str(self.dir / "containerd.toml"), "--log-level", "warn"]
        )
        wait_until(
            lambda: _run(self._ctr("version"), check=False).returncode == 0,
            timeout=self.start_timeout,
            what="containerd",
            check=self._check_alive(containerd),
        )

    def _ctr(self, *args: str) -> list[str]:
        return ["ctr", "--address", str(self.containerd_socket), "--namespace", "k8s.io", *args]

    def _preload_images(self) -> None:
        """Import every image tarball into the CRI namespace, unpacked for overlayfs."""
        for tar in sorted((self.build_dir / "images").glob("*.tar")):
            argv = self._ctr("images", "import", "--snapshotter", "overlayfs", str(tar))
            result = _run(argv, check=False, timeout=300)
            if result.returncode != 0:
                raise NodeError(f"ctr images import {tar}: {result.stderr.strip()}")

    def _start_kubelet(self) -> None:
        assert self.dir is not None and self.plane is not None
        kubelet_dir = self.dir / "kubelet"
        kubelet_dir.mkdir()
        self.kubelet_port = free_port()
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            # The API server reaches the kubelet (logs, exec) without a client certificate.
            "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
            "authorization": {"mode": "AlwaysAllow"},
            "address": self.node_ip,
            "port": self.kubelet_port,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": free_port(),
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": self.cgroup_root,
            "failSwapOn": False,
            "failCgroupV1": False,
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "clusterDNS": [CLUSTER_DNS],
            "clusterDomain": "cluster.local",
            "resolvConf": "/etc/resolv.conf",
            "podLogsDir": str(self.dir / "pod-logs"),
            # A shared disk must not make the kubelet evict pods or delete preloaded images.
            "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "protectKernelDefaults": False,
            "makeIPTablesUtilChains": True,
            "serializeImagePulls": False,
            # Mounted Secrets and ConfigMaps follow their objects within ~10 s instead of ~1 min
            # (the bundled NATS reads the operator's user list from a Secret volume).
            "syncFrequency": "10s",
            "registerNode": True,
            "maxPods": 110,
            "podPidsLimit": -1,
            "enforceNodeAllocatable": [],
            "localStorageCapacityIsolation": False,
        }
        config_path = self.dir / "kubelet.yaml"
        config_path.write_text(yaml.safe_dump(config))
        self._component(
            "kubelet",
            [
                str(self.build_dir / "bin" / "kubelet"),
                f"--config={config_path}",
                f"--kubeconfig={self.plane.admin_kubeconfig}",
                f"--root-dir={kubelet_dir}",
                f"--cert-dir={self.dir / 'kubelet-pki'}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={self.node_ip}",
                "--v=1",
            ],
        )

    def _start_kube_proxy(self) -> None:
        assert self.dir is not None and self.plane is not None
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "mode": "iptables",
            "clientConnection": {"kubeconfig": str(self.plane.admin_kubeconfig)},
            "hostnameOverride": NODE_NAME,
            "clusterCIDR": POD_SUBNET,
            "bindAddress": "0.0.0.0",
            "healthzBindAddress": f"127.0.0.1:{free_port()}",
            "metricsBindAddress": f"127.0.0.1:{free_port()}",
            # Leave the host's conntrack table size and timeouts alone.
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
            # No NodePorts on 127.0.0.1: they would need net.ipv4.conf.all.route_localnet=1.
            "iptables": {"localhostNodePorts": False},
        }
        config_path = self.dir / "kube-proxy.yaml"
        config_path.write_text(yaml.safe_dump(config))
        self._component(
            "kube-proxy", [str(self.build_dir / "bin" / "kube-proxy"), f"--config={config_path}", "--v=1"]
        )

    def _wait_node_ready(self) -> None:
        with self.api() as api:
            core = client.CoreV1Api(api)

            def ready() -> bool:
                try:
                    status = core.read_node(NODE_NAME).status
                except ApiException:
                    return False
                conditions = (status.conditions if status else None) or []
                return any(c.type == "Ready" and c.status == "True" for c in conditions)

            wait_until(
                ready,
                timeout=self.start_timeout,
                interval=0.5,
                what=f"node {NODE_NAME} Ready",
                check=self._check_all_alive,
            )

    def _drop_fake_node(self) -> None:
        """Delete envtest's kwok node: every pod must land on the real node."""
        with self.api() as api, contextlib.suppress(ApiException):
            client.CoreV1Api(api).delete_node("kwok-node-0")

    def _deploy_coredns(self) -> None:
        manifest = (Path(__file__).parent / "coredns.yaml").read_text()
        manifest = manifest.replace("${COREDNS_IMAGE}", self.images["COREDNS_IMAGE"])
        manifest = manifest.replace("${CLUSTER_DNS}", CLUSTER_DNS)
        self.kubectl("apply", "-f", "-", input=manifest)
        self.kubectl(
            "-n",
            "kube-system",
            "rollout",
            "status",
            "deployment/coredns",
            f"--timeout={int(self.start_timeout)}s",
            timeout=self.start_timeout + 10,
        )

    # ---------------------------------------------------------------- helpers

    @contextlib.contextmanager
    def api(self) -> Iterator[client.ApiClient]:
        assert self.plane is not None
        with self.plane.api_client() as api:
            yield api

    def kubectl(self, *args: str, input: str | None = None, timeout: float = 120) -> str:
        """Run kubectl against this cluster; raise with its output when it fails."""
        result = subprocess.run(
            [helm_bin.kubectl(), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise NodeError(f"kubectl {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result.stdout

    def container_pid(self, container_id: str) -> int:
        """Host PID of a running container's first process (``containerd://<id>`` or ``<id>``)."""
        wanted = container_id.removeprefix("containerd://")
        for line in _run(self._ctr("tasks", "ls")).stdout.splitlines()[1:]:
            words = line.split()
            if len(words) >= 3 and words[0] == wanted and words[2] == "RUNNING":
                return int(words[1])
        raise NodeError(f"no running containerd task {wanted}")

    def tag_image(self, source: str, target: str) -> None:
        """Give a preloaded image a second reference (e.g. a new tag for `helm upgrade`)."""
        _run(self._ctr("images", "tag", "--force", source, target))

    def host_path_volume(self, name: str, *, claim: tuple[str, str], size: str, owner: int) -> None:
        """A hostPath PersistentVolume in the node's temp dir, pre-bound to ``claim`` (namespace,
        name) and owned by uid/gid ``owner``; it goes with the temp dir at teardown."""
        assert self.dir is not None
        path = self.dir / "volumes" / name
        path.mkdir(parents=True)
        os.chown(path, owner, owner)
        namespace, claim_name = claim
        volume = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": name},
            "spec": {
                "capacity": {"storage": size},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "hostPath": {"path": str(path), "type": "Directory"},
                "claimRef": {"namespace": namespace, "name": claim_name},
            },
        }
        self.kubectl("apply", "-f", "-", input=json.dumps(volume))

    # ---------------------------------------------------------------- teardown

    def stop(self) -> None:
        """Undo everything, in reverse order; each step runs even when an earlier one failed.

        Once: a second call (the session fixture's exit after an early stop) does nothing.
        """
        if self.stopped:
            return
        self.stopped = True
        _LIVE.discard(self)
        steps: list[tuple[str, Callable[[], None]]] = [
            ("stop kube-proxy and kubelet", self._stop_node_agents),
            ("kill pod processes", self._kill_pods),
            ("stop containerd and its shims", self._stop_containerd),
            ("unmount", self._unmount),
            ("delete network namespaces", self._delete_netns),
            ("delete links", self._delete_links),
            ("remove iptables chains", self._clean_iptables),
            ("restore sysctls", self.changes.restore_sysctls),
            ("remove cgroups", self._remove_cgroups),
            ("stop control plane", self._stop_plane),
            ("release the host lock", self._unlock_host),
        ]
        errors = []
        for what, step in steps:
            try:
                step()
            except Exception as exc:
                errors.append(f"{what}: {exc}")
        if self.dir is not None and self.dir.exists():
            if self.keep_dir:
                (self.dir / "undo.log").write_text("\n".join(self.changes.undo_log + errors) + "\n")
            else:
                shutil.rmtree(self.dir, ignore_errors=True)
        if errors:
            raise NodeError("node teardown incomplete: " + "; ".join(errors))

    def _stop_node_agents(self) -> None:
        for component in reversed(self.components):
            if component.name in ("kube-proxy", "kubelet"):
                component.stop()

    def _cgroup_tree(self) -> list[Path]:
        """Every cgroup dir under our root in every hierarchy (the kubelet also uses the
        unified one), deepest first."""
        dirs: list[Path] = []
        if not self.cgroup_root:
            return dirs
        roots = {(h / self.cgroup_root.lstrip("/")).resolve() for h in CGROUP_FS.iterdir()}
        for root in sorted(roots):
            # os.walk ignores dirs the kubelet removes while we look (bottom-up: deepest first).
            dirs.extend(Path(top) for top, _, _ in os.walk(root, topdown=False))
        return dirs

    def _kill_pods(self) -> None:
        """SIGKILL every process in the node's cgroups (the pods), until none is left."""
        deadline = time.monotonic() + 30
        while True:
            pids = set()
            for cg in self._cgroup_tree():
                with contextlib.suppress(OSError):
                    pids.update(int(p) for p in (cg / "cgroup.procs").read_text().split())
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                raise NodeError(f"pod processes survive SIGKILL: {sorted(pids)}")
            time.sleep(0.2)

    def _stop_containerd(self) -> None:
        for component in reversed(self.components):
            component.stop()
        self.components.clear()
        # Shims re-parent to init; they name our socket on their command line.
        if self.dir is None:
            return
        marker = str(self.dir / "containerd.sock").encode()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                if marker in (proc / "cmdline").read_bytes():
                    os.kill(int(proc.name), signal.SIGKILL)
                    self.changes.undo_log.append(f"killed leftover process {proc.name}")

    def _unmount(self) -> None:
        if self.dir is None:
            return
        for point in _mounts_under(self.dir):
            _run(["umount", "-l", point], check=False)
            self.changes.undo_log.append(f"unmounted {point}")

    def _delete_netns(self) -> None:
        if not NETNS_DIR.exists():
            return
        for name in sorted(set(os.listdir(NETNS_DIR)) - self.changes.netns_before):
            _run(["ip", "netns", "delete", name], check=False)
            self.changes.undo_log.append(f"deleted netns {name}")
        if self.changes.netns_dir_created:
            for point in _mounts_under(NETNS_DIR):
                _run(["umount", "-l", point], check=False)
            with contextlib.suppress(OSError):
                NETNS_DIR.rmdir()
                self.changes.undo_log.append(f"removed {NETNS_DIR}")

    def _delete_links(self) -> None:
        if _run(["ip", "link", "show", BRIDGE], check=False).returncode == 0:
            _run(["ip", "link", "delete", BRIDGE])
            self.changes.undo_log.append(f"deleted link {BRIDGE}")

    def _clean_iptables(self) -> None:
        for save, restore in (("iptables-save", "iptables-restore"), ("ip6tables-save", "ip6tables-restore")):
            current = _run([save], check=False).stdout
            if not current or not any(OUR_CHAIN.search(line.lstrip(":-A ")) for line in current.splitlines()):
                continue
            result = subprocess.run(
                [restore],
                input=strip_our_chains(current),
                capture_output=True,
                text=True,
                check=False,
                timeout=60,
            )
            if result.returncode != 0:
                raise NodeError(f"{restore}: {result.stderr.strip()}")
            self.changes.undo_log.append(f"{restore}: removed KUBE-*/CNI-* chains and their rules")
        if self.changes.forward_policy:
            _run(["iptables", "-P", "FORWARD", self.changes.forward_policy], check=False)

    def _remove_cgroups(self) -> None:
        for cg in self._cgroup_tree():
            with contextlib.suppress(FileNotFoundError):
                cg.rmdir()
        self.changes.undo_log.append(f"removed cgroup {self.cgroup_root}")

    def _stop_plane(self) -> None:
        if self.plane is not None:
            self.plane.stop()
            self.plane = None
