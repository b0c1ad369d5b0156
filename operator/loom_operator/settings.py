"""Operator settings: environment variables (``LOOM_*``), overridable by ``loom operator`` flags.

The render functions take these as plain data, so ``loom render`` and the running
operator produce the same objects from the same settings.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from loom import __version__

KedaMode = Literal["auto", "on", "off"]
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
    image: str = DEFAULT_IMAGE
    image_pull_policy: str = "IfNotPresent"
    keda: KedaMode = "auto"
    scaler_interval: float = 15.0
    metrics_port: int = 8080
    #: Full re-apply of every resource's children (drift repair); readiness follows watch events.
    resync_seconds: float = 120.0
    kubeconfig: str | None = None
    #: Kopf peering object name for a hot standby; None runs standalone (one replica).
    peering: str | None = None
    #: Seconds a replica's keep-alive counts in the peering (Kopf's default 60): the standby's takeover delay.
    peering_lifetime: int | None = None

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
        return cls(
            watch_namespaces=_split(e.get("LOOM_WATCH_NAMESPACES", "")),
            nats_url=e.get("LOOM_NATS_URL") or cls.nats_url,
            nats_creds_secret=e.get("LOOM_NATS_CREDS_SECRET") or None,
            nats_tls_secret=e.get("LOOM_NATS_TLS_SECRET") or None,
            nats_monitor_url=(e.get("LOOM_NATS_MONITOR_URL") or cls.nats_monitor_url).rstrip("/"),
            image=e.get("LOOM_IMAGE") or cls.image,
            image_pull_policy=e.get("LOOM_IMAGE_PULL_POLICY") or cls.image_pull_policy,
            keda=keda,  # type: ignore[arg-type]
            scaler_interval=float(e.get("LOOM_SCALER_INTERVAL") or cls.scaler_interval),
            metrics_port=int(e.get("LOOM_METRICS_PORT") or cls.metrics_port),
            resync_seconds=float(e.get("LOOM_RESYNC_SECONDS") or cls.resync_seconds),
            kubeconfig=e.get("KUBECONFIG") or None,
            peering=e.get("LOOM_PEERING") or None,
            peering_lifetime=int(e["LOOM_PEERING_LIFETIME"]) if e.get("LOOM_PEERING_LIFETIME") else None,
        )

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with the given (non-None) fields replaced: how CLI flags win over env."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})
