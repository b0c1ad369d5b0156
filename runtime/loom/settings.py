"""Connection settings shared by every role, from CLI options or ``LOOM_*`` environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

#: Set (``1``) by ``loom up`` for every process it starts. One switch for what differs on a
#: laptop: loopback model endpoints may be allowed, and runtime ports bind loopback only.
LOCAL_MODE_ENV = "LOOM_LOCAL_MODE"
#: Where a role's HTTP ports (metrics, health) listen: every interface in a pod (the kubelet and
#: Prometheus reach the pod's IP), loopback only in local mode (nothing else on the network may).
POD_BIND_HOST = "0.0.0.0"
LOCAL_BIND_HOST = "127.0.0.1"
#: Replicas of Loom's streams and Key-Value buckets. One setting, next to the server list because
#: both describe the NATS deployment (not a routing policy): every role declares streams or buckets,
#: so every role must read the same value. Unset: new ones get 1 and existing ones keep theirs.
REPLICAS_ENV = "LOOM_NATS_REPLICAS"
#: JetStream's own bound: a stream has at most 5 replicas.
MAX_REPLICAS = 5


def parse_replicas(text: str | None) -> int | None:
    """``LOOM_NATS_REPLICAS`` as a number of replicas (None when unset); ValueError for anything else
    than 1..5."""
    if text is None or not text.strip():
        return None
    try:
        n = int(text.strip())
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_REPLICAS:
        raise ValueError(
            f"{REPLICAS_ENV}={text!r}: must be a whole number from 1 to {MAX_REPLICAS} "
            "(the JetStream cluster's size or less; 3 on a 3-node cluster, 1 on a single server)"
        )
    return n


#: Seconds a stored publish or a JetStream API request may take before it fails.
PUBLISH_TIMEOUT_ENV = "LOOM_NATS_PUBLISH_TIMEOUT"
DEFAULT_PUBLISH_TIMEOUT = 10.0


def parse_publish_timeout(text: str | None) -> float:
    """``LOOM_NATS_PUBLISH_TIMEOUT`` in seconds (the default when unset); ValueError unless positive."""
    if text is None or not text.strip():
        return DEFAULT_PUBLISH_TIMEOUT
    try:
        value = float(text.strip())
    except ValueError:
        value = 0.0
    if not 0 < value <= 3600:
        raise ValueError(f"{PUBLISH_TIMEOUT_ENV}={text!r}: must be seconds above 0, at most 3600")
    return value


def local_mode(env: Mapping[str, str] | None = None) -> bool:
    """True when ``LOOM_LOCAL_MODE`` is on (``1``, ``true`` or ``yes``)."""
    e = os.environ if env is None else env
    return e.get(LOCAL_MODE_ENV, "").strip().lower() in ("1", "true", "yes")


def bind_host(env: Mapping[str, str] | None = None) -> str:
    """The address runtime HTTP ports listen on: loopback in local mode, every interface otherwise."""
    return LOCAL_BIND_HOST if local_mode(env) else POD_BIND_HOST


@dataclass(frozen=True)
class NatsSettings:
    """How to reach NATS: URL plus one of credentials file, user/password or token; optional TLS."""

    url: str = "nats://127.0.0.1:4222"
    creds_file: str | None = None
    user: str | None = None
    password: str | None = None
    token: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    name: str = "loom"
    #: Reply subjects of this identity (``_INBOX`` by default); with bus permissions each identity
    #: may subscribe only to its own prefix, so nobody reads another's replies.
    inbox_prefix: str | None = None
    #: Replicas of streams and Key-Value buckets (:data:`REPLICAS_ENV`); None keeps what exists.
    replicas: int | None = None
    #: Seconds a publish into a stream (retried while JetStream elects a leader) or a JetStream API
    #: request may take before it fails (:data:`PUBLISH_TIMEOUT_ENV`). The server never answers a
    #: publish this identity may not make, so a denied one fails only when this runs out.
    publish_timeout: float = DEFAULT_PUBLISH_TIMEOUT

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, name: str = "loom") -> NatsSettings:
        """Read ``LOOM_NATS_URL``, ``LOOM_NATS_CREDS``, ``LOOM_NATS_USER``, ``LOOM_NATS_PASSWORD``,
        ``LOOM_NATS_TOKEN``, ``LOOM_NATS_TLS_CA``, ``LOOM_NATS_TLS_CERT``, ``LOOM_NATS_TLS_KEY``,
        ``LOOM_NATS_INBOX_PREFIX``, ``LOOM_NATS_REPLICAS``, ``LOOM_NATS_PUBLISH_TIMEOUT``."""
        e = os.environ if env is None else env
        return cls(
            url=e.get("LOOM_NATS_URL", cls.url),
            creds_file=e.get("LOOM_NATS_CREDS") or None,
            user=e.get("LOOM_NATS_USER") or None,
            password=e.get("LOOM_NATS_PASSWORD") or None,
            token=e.get("LOOM_NATS_TOKEN") or None,
            tls_ca=e.get("LOOM_NATS_TLS_CA") or None,
            tls_cert=e.get("LOOM_NATS_TLS_CERT") or None,
            tls_key=e.get("LOOM_NATS_TLS_KEY") or None,
            inbox_prefix=e.get("LOOM_NATS_INBOX_PREFIX") or None,
            replicas=parse_replicas(e.get(REPLICAS_ENV)),
            publish_timeout=parse_publish_timeout(e.get(PUBLISH_TIMEOUT_ENV)),
            name=name,
        )
