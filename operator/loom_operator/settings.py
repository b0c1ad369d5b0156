"""Operator settings: environment variables (``LOOM_*``), overridable by ``loom operator`` flags.

The render functions take these as plain data, so ``loom render`` and the running
operator produce the same objects from the same settings.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from loom import __version__
from loom.settings import REPLICAS_ENV, parse_replicas
from loom.telemetry import role_env
from loom_operator import network_settings
from loom_operator.network_settings import NetworkPolicySettings

KedaMode = Literal["auto", "on", "off"]
NatsAuthMode = Literal["generated", "creds", "none"]
NATS_AUTH_MODES = ("generated", "creds", "none")
#: A tenant with generated credentials: a subject token that is also a Secret-name part.
TENANT_PATTERN = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
DEFAULT_IMAGE = f"ghcr.io/loom-dev/loom:{__version__}"


def _split(value: str) -> tuple[str, ...]:
    return tuple(sorted({v.strip() for v in value.split(",") if v.strip()}))


@dataclass(frozen=True)
class Settings:
    """Everything the operator is told from outside; defaults match OPERATOR-CONTRACT.md."""

    watch_namespaces: tuple[str, ...] = ()
    nats_url: str = "nats://nats:4222"
    nats_creds_secret: str | None = None
    nats_tls_secret: str | None = None
    nats_monitor_url: str = "http://nats:8222"
    #: Replicas of Loom's streams and buckets, passed to every rendered pod (``LOOM_NATS_REPLICAS``);
    #: None leaves them as they are.
    nats_replicas: int | None = None
    #: How rendered pods get their bus identity (see render/bus_auth.py).
    nats_auth: NatsAuthMode = "none"
    #: Key every generated password derives from (``generated`` mode).
    nats_auth_key: str | None = field(default=None, repr=False)
    #: ``namespace/name`` of the Secret the operator writes the server's authorization block to.
    nats_auth_secret: str | None = None
    #: Tenants that get generated credentials (``<auth secret>-tenant-<t>``).
    nats_tenants: tuple[str, ...] = ()
    #: NATS account of Loom's streams, read by the built-in scaler and KEDA's trigger.
    nats_account: str = "$G"
    image: str = DEFAULT_IMAGE
    image_pull_policy: str = "IfNotPresent"
    keda: KedaMode = "auto"
    scaler_interval: float = 15.0
    metrics_port: int = 8080
    #: Full re-apply of every resource's children (drift repair); readiness follows watch events.
    resync_seconds: float = 120.0
    #: How often RouterPolicy status shows limit and budget use read from NATS (0: never).
    usage_interval: float = 30.0
    kubeconfig: str | None = None
    #: Kopf peering object name for a hot standby; None runs standalone (one replica).
    peering: str | None = None
    #: Seconds a replica's keep-alive counts in the peering (Kopf's default 60): the standby's takeover delay.
    peering_lifetime: int | None = None
    #: A NetworkPolicy per Worker tier (``LOOM_NETWORK_POLICY``); None renders none.
    network_policy: NetworkPolicySettings | None = None
    #: Tracing and audit variables of every rendered pod (``LOOM_OTLP_ENDPOINT``, ``LOOM_AUDIT*``).
    telemetry_env: tuple[tuple[str, str], ...] = ()

    @property
    def clusterwide(self) -> bool:
        return not self.watch_namespaces

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the ``LOOM_*`` variables of OPERATOR-CONTRACT.md; unset ones keep their defaults."""
        e = os.environ if env is None else env
        keda = e.get("LOOM_KEDA", "auto").strip().lower() or "auto"
        if keda not in ("auto", "on", "off"):
            raise ValueError(f"LOOM_KEDA must be auto, on or off, got {keda!r}")
        auth = e.get("LOOM_NATS_AUTH", "none").strip().lower() or "none"
        if auth not in NATS_AUTH_MODES:
            raise ValueError(f"LOOM_NATS_AUTH must be one of {', '.join(NATS_AUTH_MODES)}, got {auth!r}")
        tenants = _split(e.get("LOOM_NATS_TENANTS", ""))
        bad = [t for t in tenants if not TENANT_PATTERN.match(t)]
        if bad:
            raise ValueError(
                f"LOOM_NATS_TENANTS: {', '.join(map(repr, bad))} must be lower-case letters, digits and '-' "
                "(at most 63), starting and ending with a letter or digit"
            )
        creds_secret = e.get("LOOM_NATS_CREDS_SECRET") or None
        if auth != "none" and creds_secret:
            raise ValueError(
                f"LOOM_NATS_CREDS_SECRET (one identity shared by every pod) cannot be combined with "
                f"LOOM_NATS_AUTH={auth} (an identity per resource); set LOOM_NATS_AUTH=none to share it"
            )
        key = e.get("LOOM_NATS_AUTH_KEY") or None
        auth_secret = e.get("LOOM_NATS_AUTH_SECRET") or None
        if auth == "generated" and not key:
            raise ValueError("LOOM_NATS_AUTH=generated needs LOOM_NATS_AUTH_KEY (the chart's key Secret)")
        if auth_secret is not None and auth_secret.count("/") != 1:
            raise ValueError(f"LOOM_NATS_AUTH_SECRET must be namespace/name, got {auth_secret!r}")
        return cls(
            watch_namespaces=_split(e.get("LOOM_WATCH_NAMESPACES", "")),
            nats_url=e.get("LOOM_NATS_URL") or cls.nats_url,
            nats_creds_secret=creds_secret,
            nats_tls_secret=e.get("LOOM_NATS_TLS_SECRET") or None,
            nats_monitor_url=(e.get("LOOM_NATS_MONITOR_URL") or cls.nats_monitor_url).rstrip("/"),
            nats_replicas=parse_replicas(e.get(REPLICAS_ENV)),
            nats_auth=auth,  # type: ignore[arg-type]
            nats_auth_key=key,
            nats_auth_secret=auth_secret,
            nats_tenants=tenants,
            nats_account=e.get("LOOM_NATS_ACCOUNT") or cls.nats_account,
            image=e.get("LOOM_IMAGE") or cls.image,
            image_pull_policy=e.get("LOOM_IMAGE_PULL_POLICY") or cls.image_pull_policy,
            keda=keda,  # type: ignore[arg-type]
            scaler_interval=float(e.get("LOOM_SCALER_INTERVAL") or cls.scaler_interval),
            metrics_port=int(e.get("LOOM_METRICS_PORT") or cls.metrics_port),
            resync_seconds=float(e.get("LOOM_RESYNC_SECONDS") or cls.resync_seconds),
            usage_interval=float(e.get("LOOM_USAGE_INTERVAL") or cls.usage_interval),
            kubeconfig=e.get("KUBECONFIG") or None,
            peering=e.get("LOOM_PEERING") or None,
            peering_lifetime=int(e["LOOM_PEERING_LIFETIME"]) if e.get("LOOM_PEERING_LIFETIME") else None,
            network_policy=(
                NetworkPolicySettings.from_json(e[network_settings.ENV])
                if e.get(network_settings.ENV, "").strip()
                else None
            ),
            telemetry_env=tuple(role_env(e).items()),
        )

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with the given (non-None) fields replaced: how CLI flags win over env."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})
