"""A real Kubernetes control plane for tests, without Docker.

``ControlPlane`` runs etcd and kube-apiserver (optionally kube-controller-manager,
kube-scheduler and kwok) as local processes on random loopback ports, with real TLS,
RBAC and service-account tokens, so tests exercise the same API-server behaviour as a
cluster: schema and CEL validation, admission, RBAC denials, garbage collection,
Deployments whose Pods become Running on a kwok fake node.

Binaries come from ``KUBEBUILDER_ASSETS`` (the envtest convention) or from the cache that
``hack/envtest/build.sh`` fills (the test setup, ``hack/test-setup.sh``, builds it from the
Go module proxy).

Every child runs in its own process group and is stopped with the test process: by the
context manager or fixture, by atexit (Ctrl-C), by a SIGTERM handler (CI timeouts), and on a
hard kill of the parent by PR_SET_PDEATHSIG (Linux); temp dirs such a kill leaves behind are
swept by the next start.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import datetime
import ipaddress
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from loom.ports import free_port
from tests.support.setup_outputs import NotSetUp, checked_output

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "hack" / "envtest" / "build.sh"
CORE_BINARIES = ("etcd", "kube-apiserver")
CONTROLLER_BINARIES = ("kube-controller-manager", "kube-scheduler", "kwok")
SERVICE_CIDR = "10.96.0.0/16"
POD_CIDR = "10.244.0.1/24"
FAKE_NODE_NAME = "kwok-node-0"
KWOK_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
# Generous for a cold 2-core machine; a warm start takes a few seconds.
DEFAULT_START_TIMEOUT = 120.0
PORT_RETRIES = 3


class ControlPlaneError(RuntimeError):
    """The control plane could not be built, started or driven."""


# --------------------------------------------------------------------------- binaries


def find_binaries(names: Sequence[str]) -> dict[str, Path]:
    """Locate ``names``: KUBEBUILDER_ASSETS first, then the cache that build.sh fills.

    build.sh owns the versions and the cache layout and answers ``--check`` in milliseconds,
    so it is asked rather than duplicating its paths here. Nothing is built here: a cold
    build takes minutes and belongs to the test setup (``hack/test-setup.sh``), not to a
    fixture under a per-test timeout.
    """
    found: dict[str, Path] = {}
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets:
        for name in names:
            candidate = Path(assets) / name
            if os.access(candidate, os.X_OK):
                found[name] = candidate
    missing = [n for n in names if n not in found]
    if not missing:
        return found
    try:
        bin_dir = Path(checked_output(BUILD_SCRIPT, "envtest"))
    except NotSetUp as exc:
        raise ControlPlaneError(
            f"control-plane binaries not built ({', '.join(missing)}; or set KUBEBUILDER_ASSETS): {exc}"
        ) from exc
    for name in missing:
        candidate = bin_dir / name
        if not os.access(candidate, os.X_OK):
            raise ControlPlaneError(f"{BUILD_SCRIPT} --check names {bin_dir}, which lacks {name}")
        found[name] = candidate
    return found


_FOUND: dict[tuple[str, ...], dict[str, Path]] = {}


def ensure_binaries(with_controllers: bool = True) -> dict[str, Path]:
    """``find_binaries`` for a full control plane, memoised for the process."""
    names = CORE_BINARIES + (CONTROLLER_BINARIES if with_controllers else ())
    if names not in _FOUND:
        _FOUND[names] = find_binaries(names)
    return _FOUND[names]


# --------------------------------------------------------------------------- PKI


@dataclass(frozen=True)
class KeyPair:
    """A PEM certificate and its private key on disk."""

    cert: Path
    key: Path


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


class Pki:
    """A throwaway CA plus the certificates one control plane needs.

    ECDSA P-256 keys: generated in microseconds, and accepted by every component for TLS,
    client certificates and service-account token signing (ES256).
    """

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self._ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "loom-envtest-ca")])
        now = datetime.datetime.now(datetime.UTC)
        self._ca_cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self._ca_key.public_key()),
                critical=False,
            )
            .sign(self._ca_key, hashes.SHA256())
        )
        self.ca = KeyPair(self.dir / "ca.crt", self.dir / "ca.key")
        self.ca.cert.write_bytes(self._ca_cert.public_bytes(serialization.Encoding.PEM))
        _write_key(self._ca_key, self.ca.key)

        sa_key = ec.generate_private_key(ec.SECP256R1())
        self.sa_key = self.dir / "sa.key"
        self.sa_pub = self.dir / "sa.pub"
        _write_key(sa_key, self.sa_key)
        self.sa_pub.write_bytes(
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    @property
    def ca_pem(self) -> bytes:
        """The CA certificate, PEM encoded (for kubeconfigs)."""
        return self.ca.cert.read_bytes()

    def issue(
        self,
        stem: str,
        common_name: str,
        *,
        organizations: Sequence[str] = (),
        server_names: Sequence[str] = (),
    ) -> KeyPair:
        """Sign a leaf: a serving cert when ``server_names`` is given, else a client cert."""
        key = ec.generate_private_key(ec.SECP256R1())
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attrs))
            .issuer_name(self._ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._ca_key.public_key()),
                critical=False,
            )
        )
        if server_names:
            sans: list[x509.GeneralName] = []
            for entry in server_names:
                try:
                    sans.append(x509.IPAddress(ipaddress.ip_address(entry)))
                except ValueError:
                    sans.append(x509.DNSName(entry))
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False).add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
        else:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
            )
        cert = builder.sign(self._ca_key, hashes.SHA256())
        pair = KeyPair(self.dir / f"{stem}.crt", self.dir / f"{stem}.key")
        pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, pair.key)
        return pair


# --------------------------------------------------------------------------- processes


def _die_with_parent() -> None:
    """Runs in the child before exec: become a process-group leader and die with us.

    PR_SET_PDEATHSIG covers the case no Python cleanup can: the test runner being
    SIGKILLed. A new session keeps terminal Ctrl-C from racing our own ordered teardown.
    """
    os.setsid()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            pr_set_pdeathsig = 1
            libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


@dataclass
class Component:
    """One running binary with its log file.

    The process is never reaped before its group has been killed: while the leader is an
    unreaped zombie its PID, and so its process-group ID, cannot be reused, which makes
    ``killpg`` safe on a machine shared with other people's processes.
    """

    name: str
    argv: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    def start(self, env: Mapping[str, str] | None = None) -> None:
        """Start detached in a new process group, stdout+stderr to the log file."""
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            preexec_fn=_die_with_parent,
        )

    def exit_status(self) -> int | None:
        """The exit status if the process has ended (without reaping it), else None."""
        proc = self.process
        if proc is None or proc.returncode is not None:
            return proc.returncode if proc is not None else -1
        try:
            info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return -1
        return None if info is None else info.si_status

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.exit_status() is None

    def _wait_exited(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.exit_status() is None:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def _signal_group(self, sig: signal.Signals) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``grace`` seconds, then reap."""
        proc = self.process
        if proc is not None and proc.returncode is None:
            if self.exit_status() is None:
                self._signal_group(signal.SIGTERM)
                if not self._wait_exited(grace):
                    self._signal_group(signal.SIGKILL)
                    self._wait_exited(grace)
            # Leftovers in the group go too; the unreaped leader pins the group ID.
            self._signal_group(signal.SIGKILL)
            proc.wait(timeout=grace)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, max_bytes: int = 6000) -> str:
        """The end of this component's log, for failure messages."""
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return "<no log>"
        return data[-max_bytes:].decode(errors="replace")


def wait_until(
    predicate: Callable[[], bool],
    *,
    timeout: float,
    interval: float = 0.2,
    what: str = "condition",
    check: Callable[[], None] | None = None,
) -> None:
    """Poll ``predicate`` until it holds or ``timeout`` seconds pass (then raise).

    ``check`` runs each round and may raise early, e.g. when a process has died.
    """
    deadline = time.monotonic() + timeout
    while True:
        if check is not None:
            check()
        if predicate():
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# --------------------------------------------------------------------------- kubeconfig


def write_kubeconfig(
    path: Path,
    *,
    server: str,
    ca_pem: bytes | None,
    user: str,
    client: KeyPair | None = None,
    token: str | None = None,
    namespace: str | None = None,
) -> Path:
    """Write a single-context kubeconfig with inline CA and cert/key or token."""
    user_entry: dict[str, str] = {}
    if client is not None:
        user_entry["client-certificate"] = str(client.cert)
        user_entry["client-key"] = str(client.key)
    if token is not None:
        user_entry["token"] = token
    context: dict[str, str] = {"cluster": "envtest", "user": user}
    if namespace:
        context["namespace"] = namespace
    cluster: dict[str, str] = {"server": server}
    if ca_pem is not None:
        cluster["certificate-authority-data"] = base64.b64encode(ca_pem).decode()
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "envtest", "cluster": cluster}],
        "users": [{"name": user, "user": user_entry}],
        "contexts": [{"name": "envtest", "context": context}],
        "current-context": "envtest",
    }
    path.write_text(yaml.safe_dump(kubeconfig, sort_keys=False))
    path.chmod(0o600)
    return path


# --------------------------------------------------------------------------- control plane


TEMP_PREFIX = "loom-envtest-"
OWNER_FILE = "owner.pid"
KEEP_FILE = "keep"
_LIVE: set[ControlPlane] = set()


def _sweep_stale_dirs() -> None:
    """Remove temp dirs left by runs that were SIGKILLed (their owner pid is gone).

    Their processes died with the owner (PR_SET_PDEATHSIG); only the files remain. Dirs
    without an owner file, kept ones and those of live processes are never touched.
    """
    for candidate in Path(tempfile.gettempdir()).glob(f"{TEMP_PREFIX}*"):
        owner_file = candidate / OWNER_FILE
        try:
            owner = int(owner_file.read_text())
        except (OSError, ValueError):
            continue
        if owner == os.getpid() or (candidate / KEEP_FILE).exists():
            continue
        try:
            os.kill(owner, 0)
        except ProcessLookupError:
            shutil.rmtree(candidate, ignore_errors=True)
        except PermissionError:
            continue


def _stop_all_live() -> None:
    for plane in list(_LIVE):
        plane.stop()


atexit.register(_stop_all_live)
_sigterm_installed = False


def _install_sigterm_teardown() -> None:
    """On SIGTERM, stop every live control plane before dying as SIGTERM would.

    Python runs no atexit hooks on a fatal signal; CI runners and timeouts send SIGTERM.
    Only installed from the main thread and only over the default disposition, so an
    application's own handler is never replaced.
    """
    global _sigterm_installed
    if _sigterm_installed or threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        _stop_all_live()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_sigterm)
    _sigterm_installed = True


class Components:
    """The binaries one harness runs (``ControlPlane``, ``tests.k8s.node.NodeCluster``).

    Each is a :class:`Component` logging to ``<dir>/<name>.log``; ``error`` is the exception a
    harness raises when one of them has died.
    """

    error: type[Exception] = ControlPlaneError
    dir: Path | None
    components: list[Component]

    def _component(self, name: str, argv: list[str], env: Mapping[str, str] | None = None) -> Component:
        assert self.dir is not None
        component = Component(name, argv, self.dir / f"{name}.log")
        component.start(env)
        self.components.append(component)
        return component

    def _check_alive(self, component: Component) -> Callable[[], None]:
        """A ``wait_until`` check: raise ``error`` with the end of its log once it has exited."""

        def check() -> None:
            if not component.alive():
                raise self.error(f"{component.name} exited early:\n{component.log_tail(3000)}")

        return check

    def _check_all_alive(self) -> None:
        for component in self.components:
            self._check_alive(component)()

    def failure_report(self) -> str:
        """Log paths and tails of every component, for a failed start or test."""
        parts = []
        for component in self.components:
            status = component.exit_status()
            state = "running" if status is None else f"exited with status {status}"
            parts.append(f"--- {component.name} ({state}) log {component.log_path}:\n{component.log_tail()}")
        return "\n".join(parts)


class ControlPlane(Components):
    """etcd + kube-apiserver (+ controller-manager, scheduler, kwok) for one test session.

    Use as a context manager. ``controllers=True`` adds kube-controller-manager (all
    controllers: Deployments -> ReplicaSets -> Pods, garbage collection, namespaces,
    service accounts), kube-scheduler and kwok with one fake Node, so Pods of ordinary
    workloads get scheduled and reported Running.
    """

    def __init__(
        self,
        *,
        controllers: bool = True,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        keep_dir: bool | None = None,
        extra_apiserver_args: Sequence[str] = (),
    ) -> None:
        self.controllers = controllers
        self.start_timeout = start_timeout
        self.keep_dir = keep_dir if keep_dir is not None else os.environ.get("LOOM_ENVTEST_KEEP") == "1"
        self.extra_apiserver_args = list(extra_apiserver_args)
        self.dir: Path | None = None
        self.server = ""
        self.admin_kubeconfig = Path()
        self.components: list[Component] = []
        self.startup_seconds = 0.0
        self._pki: Pki | None = None

    # ---------------------------------------------------------------- lifecycle

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> ControlPlane:
        """Start every component and wait until the API server is ready for tests.

        A port picked by :func:`loom.ports.free_port` can be taken by another process before the
        component binds it; such a start is retried with fresh ports. On any other failure
        the temp dir (logs, kubeconfigs, certs) is kept and its path is in the error.
        """
        began = time.monotonic()
        binaries = ensure_binaries(self.controllers)
        _sweep_stale_dirs()
        for attempt in range(1, PORT_RETRIES + 1):
            try:
                self._start_once(binaries)
                break
            except ControlPlaneError as exc:
                if attempt == PORT_RETRIES or "address already in use" not in str(exc):
                    raise
        self.startup_seconds = time.monotonic() - began
        return self

    def _start_once(self, binaries: Mapping[str, Path]) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))
        (self.dir / OWNER_FILE).write_text(str(os.getpid()))
        _LIVE.add(self)
        _install_sigterm_teardown()
        try:
            self._pki = Pki(self.dir / "pki")
            self._start_etcd(binaries["etcd"])
            self._start_apiserver(binaries["kube-apiserver"])
            if self.controllers:
                self._start_controllers(binaries)
        except BaseException as exc:
            report = self.failure_report()
            port_clash = "address already in use" in report
            keep, self.keep_dir = self.keep_dir, self.keep_dir or not port_clash
            self.stop()
            self.keep_dir = keep
            if isinstance(exc, Exception):
                where = "" if port_clash else f" (logs kept in {self.dir})"
                raise ControlPlaneError(f"control plane failed to start{where}: {exc}\n{report}") from exc
            raise

    def stop(self) -> None:
        """Stop components in reverse start order; remove the temp dir unless kept."""
        for component in reversed(self.components):
            component.stop()
        self.components.clear()
        _LIVE.discard(self)
        if self.dir is not None:
            if self.keep_dir:
                (self.dir / KEEP_FILE).touch()
            else:
                shutil.rmtree(self.dir, ignore_errors=True)

    # ---------------------------------------------------------------- components

    def _start_etcd(self, binary: Path) -> None:
        assert self.dir is not None
        client_port, peer_port = free_port(), free_port()
        client_url = f"http://127.0.0.1:{client_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        self.etcd_url = client_url
        etcd = self._component(
            "etcd",
            [
                str(binary),
                "--name=envtest",
                f"--data-dir={self.dir / 'etcd'}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=envtest={peer_url}",
                # Test data is disposable: skip fsync, the dominant cost on a shared disk.
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
        )

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"{client_url}/health", timeout=2) as resp:
                    return json.loads(resp.read()).get("health") == "true"
            except (OSError, ValueError):
                return False

        wait_until(healthy, timeout=self.start_timeout, what="etcd /health", check=self._check_alive(etcd))

    def _start_apiserver(self, binary: Path) -> None:
        assert self.dir is not None and self._pki is not None
        pki = self._pki
        port = free_port()
        self.server = f"https://127.0.0.1:{port}"
        service_ip = str(next(ipaddress.ip_network(SERVICE_CIDR).hosts()))
        serving = pki.issue(
            "apiserver",
            "kube-apiserver",
            server_names=[
                "127.0.0.1",
                "localhost",
                service_ip,
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
        )
        admin = pki.issue("admin", "admin", organizations=["system:masters"])
        self.admin_kubeconfig = write_kubeconfig(
            self.dir / "admin.kubeconfig",
            server=self.server,
            ca_pem=pki.ca_pem,
            user="admin",
            client=admin,
        )
        self._admin_client = admin
        # The aggregation layer (APIService → an extension API server such as KEDA's metrics
        # server), configured as kubeadm does: the API server proxies with a front-proxy client
        # certificate and identifies the user in request headers.
        front_proxy = pki.issue("front-proxy-client", "front-proxy-client")
        argv = [
            str(binary),
            f"--etcd-servers={self.etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={port}",
            f"--cert-dir={self.dir / 'apiserver-certs'}",
            f"--tls-cert-file={serving.cert}",
            f"--tls-private-key-file={serving.key}",
            f"--client-ca-file={pki.ca.cert}",
            "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            "--profiling=false",
            f"--requestheader-client-ca-file={pki.ca.cert}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={front_proxy.cert}",
            f"--proxy-client-key-file={front_proxy.key}",
            # No kube-proxy on the control plane: reach an APIService's endpoints directly.
            "--enable-aggregator-routing=true",
        ]
        if not self.controllers:
            # Without kube-controller-manager no namespace ever gets its "default"
            # ServiceAccount, and this admission plugin would reject every Pod.
            argv.append("--disable-admission-plugins=ServiceAccount")
        argv += self.extra_apiserver_args
        apiserver = self._component("kube-apiserver", argv)
        context = self.ssl_context()

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"{self.server}/readyz", timeout=5, context=context) as resp:
                    return resp.status == 200
            except (OSError, urllib.error.HTTPError):
                return False

        wait_until(
            ready,
            timeout=self.start_timeout,
            interval=0.25,
            what="kube-apiserver /readyz",
            check=self._check_alive(apiserver),
        )

    def _start_controllers(self, binaries: Mapping[str, Path]) -> None:
        assert self.dir is not None and self._pki is not None
        pki = self._pki
        # One cluster-admin identity for kube-controller-manager, used by every controller
        # (--use-service-account-credentials=false): no per-controller SA bootstrap to
        # wait for, and RBAC of the control plane's own parts is not what tests examine.
        kcm_kubeconfig = write_kubeconfig(
            self.dir / "kube-controller-manager.kubeconfig",
            server=self.server,
            ca_pem=pki.ca_pem,
            user="system:kube-controller-manager",
            client=pki.issue(
                "kube-controller-manager",
                "system:kube-controller-manager",
                organizations=["system:masters"],
            ),
        )
        kcm = self._component(
            "kube-controller-manager",
            [
                str(binaries["kube-controller-manager"]),
                f"--kubeconfig={kcm_kubeconfig}",
                "--controllers=*",
                "--use-service-account-credentials=false",
                "--leader-elect=false",
                "--secure-port=0",
                f"--service-account-private-key-file={pki.sa_key}",
                f"--root-ca-file={pki.ca.cert}",
                f"--cluster-signing-cert-file={pki.ca.cert}",
                f"--cluster-signing-key-file={pki.ca.key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                # A HorizontalPodAutoscaler (KEDA's) acts within seconds, not the default 15 s.
                "--horizontal-pod-autoscaler-sync-period=2s",
            ],
        )
        # The scheduler's own bootstrap RBAC role (system:kube-scheduler) is sufficient.
        scheduler_kubeconfig = write_kubeconfig(
            self.dir / "kube-scheduler.kubeconfig",
            server=self.server,
            ca_pem=pki.ca_pem,
            user="system:kube-scheduler",
            client=pki.issue("kube-scheduler", "system:kube-scheduler"),
        )
        scheduler = self._component(
            "kube-scheduler",
            [
                str(binaries["kube-scheduler"]),
                f"--kubeconfig={scheduler_kubeconfig}",
                "--leader-elect=false",
                "--secure-port=0",
            ],
        )
        kwok_kubeconfig = write_kubeconfig(
            self.dir / "kwok.kubeconfig",
            server=self.server,
            ca_pem=pki.ca_pem,
            user="kwok",
            client=pki.issue("kwok", "kwok", organizations=["system:masters"]),
        )
        # An empty config file keeps a developer's ~/.kwok/kwok.yaml out of the run;
        # kwok then uses its built-in node and pod stages.
        kwok_config = self.dir / "kwok.yaml"
        kwok_config.write_text("")
        kwok = self._component(
            "kwok",
            [
                str(binaries["kwok"]),
                f"--kubeconfig={kwok_kubeconfig}",
                f"--config={kwok_config}",
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=" + "=".join(KWOK_ANNOTATION),
                f"--cidr={POD_CIDR}",
                "--node-ip=127.0.0.1",
                "--node-lease-duration-seconds=40",
            ],
        )
        self._create_fake_node()

        with self.api_client() as api:
            core = client.CoreV1Api(api)

            def node_ready() -> bool:
                status = core.read_node(FAKE_NODE_NAME).status
                conditions = (status.conditions if status else None) or []
                return any(c.type == "Ready" and c.status == "True" for c in conditions)

            def default_sa() -> bool:
                return bool(
                    core.list_namespaced_service_account(
                        "default", field_selector="metadata.name=default"
                    ).items
                )

            def all_alive() -> None:
                for component in (kcm, scheduler, kwok):
                    self._check_alive(component)()

            wait_until(node_ready, timeout=self.start_timeout, what="kwok node Ready", check=all_alive)
            # Pods are admitted only once the namespace has its default ServiceAccount.
            wait_until(default_sa, timeout=self.start_timeout, what="default ServiceAccount", check=all_alive)

    def _create_fake_node(self) -> None:
        key, value = KWOK_ANNOTATION
        resources = {"cpu": "32", "memory": "256Gi", "pods": "110"}
        node = client.V1Node(
            metadata=client.V1ObjectMeta(
                name=FAKE_NODE_NAME,
                annotations={key: value, "node.alpha.kubernetes.io/ttl": "0"},
                labels={
                    "kubernetes.io/hostname": FAKE_NODE_NAME,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "type": "kwok",
                },
            ),
            # No kwok taint: ordinary workloads under test should land here unmodified.
            status=client.V1NodeStatus(allocatable=resources, capacity=resources),
        )
        with self.api_client() as api:
            client.CoreV1Api(api).create_node(node)

    # ---------------------------------------------------------------- clients

    def issue_certificate(self, stem: str, common_name: str, server_names: Sequence[str]) -> KeyPair:
        """A serving (and client) certificate signed by this control plane's CA, e.g. for an
        extension API server the aggregation layer proxies to."""
        assert self._pki is not None, "the control plane is not started"
        return self._pki.issue(stem, common_name, server_names=server_names)

    @property
    def ca_cert(self) -> Path:
        assert self._pki is not None, "the control plane is not started"
        return self._pki.ca.cert

    def ssl_context(self) -> ssl.SSLContext:
        """A TLS context trusting this CA and presenting the admin client certificate."""
        assert self._pki is not None
        context = ssl.create_default_context(cafile=str(self._pki.ca.cert))
        context.load_cert_chain(str(self._admin_client.cert), str(self._admin_client.key))
        return context

    def api_client(self, kubeconfig: Path | None = None) -> client.ApiClient:
        """A ``kubernetes.client.ApiClient`` for ``kubeconfig`` (default: the admin one)."""
        return config.new_client_from_config(str(kubeconfig or self.admin_kubeconfig))

    def service_account_kubeconfig(
        self,
        namespace: str,
        name: str,
        rules: str | Sequence[Mapping[str, Any]] | None = None,
        *,
        namespaced: bool = False,
        expiration_seconds: int = 3600,
    ) -> Path:
        """Create ServiceAccount ``namespace/name`` with a role; return a token kubeconfig.

        See :func:`service_account_kubeconfig` for what ``rules`` may be.
        """
        assert self.dir is not None
        return service_account_kubeconfig(
            self.admin_kubeconfig,
            self.dir / f"sa-{namespace}-{name}.kubeconfig",
            namespace,
            name,
            rules,
            namespaced=namespaced,
            expiration_seconds=expiration_seconds,
        )


def service_account_kubeconfig(
    admin_kubeconfig: Path,
    out: Path,
    namespace: str,
    name: str,
    rules: str | Sequence[Mapping[str, Any]] | None = None,
    *,
    namespaced: bool = False,
    expiration_seconds: int = 3600,
) -> Path:
    """Create ServiceAccount ``namespace/name`` and its RBAC on any cluster; write a kubeconfig.

    ``rules`` is a list of PolicyRule dicts, or the YAML of one ClusterRole or Role (its kind
    decides the scope). A rule list becomes a ClusterRole + ClusterRoleBinding, or a Role +
    RoleBinding in ``namespace`` when ``namespaced`` is set. The token comes from the
    TokenRequest API, as a Pod's projected token would, so the kubeconfig authenticates
    exactly as a workload running under that ServiceAccount.
    """
    role: dict[str, Any] | None = None
    if isinstance(rules, str):
        role = yaml.safe_load(rules)
        if not isinstance(role, dict) or role.get("kind") not in ("Role", "ClusterRole"):
            raise ValueError("rules YAML must be a single Role or ClusterRole object")
        namespaced = role["kind"] == "Role"
    elif rules is not None:
        role = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role" if namespaced else "ClusterRole",
            "metadata": {"name": name if namespaced else f"{namespace}-{name}"},
            "rules": [dict(r) for r in rules],
        }

    configuration = client.Configuration()
    config.load_kube_config(config_file=str(admin_kubeconfig), client_configuration=configuration)
    with client.ApiClient(configuration) as api:
        core = client.CoreV1Api(api)
        _create_or_keep(
            lambda: core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
        )
        _create_or_keep(
            lambda: core.create_namespaced_service_account(
                namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name))
            )
        )
        if role is not None:
            _bind_role(client.RbacAuthorizationV1Api(api), role, namespace, name, namespaced=namespaced)
        token_request = core.create_namespaced_service_account_token(
            name,
            namespace,
            client.AuthenticationV1TokenRequest(
                spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=expiration_seconds)
            ),
        )
    token = token_request.status.token if token_request.status else None
    if not token:
        raise ControlPlaneError(f"TokenRequest for {namespace}/{name} returned no token")
    ca_pem = Path(configuration.ssl_ca_cert).read_bytes() if configuration.ssl_ca_cert else None
    return write_kubeconfig(
        out,
        server=configuration.host,
        ca_pem=ca_pem,
        user=f"system:serviceaccount:{namespace}:{name}",
        token=token,
        namespace=namespace,
    )


def _bind_role(
    rbac: client.RbacAuthorizationV1Api,
    role_manifest: dict[str, Any],
    namespace: str,
    name: str,
    *,
    namespaced: bool,
) -> None:
    """Create or update the role and bind it to ServiceAccount ``namespace/name``."""
    # The client sends a dict body as-is; its type stubs only know the model classes.
    role: Any = role_manifest
    role_name = role["metadata"]["name"]
    subject = client.RbacV1Subject(kind="ServiceAccount", name=name, namespace=namespace)
    role_ref = client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind=role["kind"], name=role_name)
    if namespaced:
        role_ns = role["metadata"].setdefault("namespace", namespace)
        binding_name = f"{name}-{role_name}"
        binding = client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name=binding_name, namespace=role_ns),
            role_ref=role_ref,
            subjects=[subject],
        )
        _create_or_replace(
            lambda: rbac.create_namespaced_role(role_ns, role),
            lambda: rbac.replace_namespaced_role(role_name, role_ns, role),
        )
        _create_or_replace(
            lambda: rbac.create_namespaced_role_binding(role_ns, binding),
            lambda: rbac.replace_namespaced_role_binding(binding_name, role_ns, binding),
        )
    else:
        binding_name = f"{namespace}-{name}-{role_name}"
        cluster_binding = client.V1ClusterRoleBinding(
            metadata=client.V1ObjectMeta(name=binding_name), role_ref=role_ref, subjects=[subject]
        )
        _create_or_replace(
            lambda: rbac.create_cluster_role(role),
            lambda: rbac.replace_cluster_role(role_name, role),
        )
        _create_or_replace(
            lambda: rbac.create_cluster_role_binding(cluster_binding),
            lambda: rbac.replace_cluster_role_binding(binding_name, cluster_binding),
        )


def _create_or_keep(create: Callable[[], Any]) -> None:
    """Create, treating "already exists" as success."""
    try:
        create()
    except ApiException as exc:
        if exc.status != 409:
            raise


def _create_or_replace(create: Callable[[], Any], replace: Callable[[], Any]) -> None:
    """Create, or replace the existing object so repeated calls converge."""
    try:
        create()
    except ApiException as exc:
        if exc.status != 409:
            raise
        replace()
