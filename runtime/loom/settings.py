"""Connection settings shared by every role, from CLI options or ``LOOM_*`` environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass


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

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, name: str = "loom") -> NatsSettings:
        """Read ``LOOM_NATS_URL``, ``LOOM_NATS_CREDS``, ``LOOM_NATS_USER``, ``LOOM_NATS_PASSWORD``,
        ``LOOM_NATS_TOKEN``, ``LOOM_NATS_TLS_CA``, ``LOOM_NATS_TLS_CERT``, ``LOOM_NATS_TLS_KEY``,
        ``LOOM_NATS_INBOX_PREFIX``."""
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
            name=name,
        )
