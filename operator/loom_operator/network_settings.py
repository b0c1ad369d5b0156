"""What the operator is told about the cluster's network for the NetworkPolicies it renders.

Read from ``LOOM_NETWORK_POLICY`` (JSON, set by the chart when ``networkPolicy.enabled`` and
``networkPolicy.workerEgress.enabled``); unset means the operator renders no NetworkPolicy.
Peers and rules are Kubernetes NetworkPolicyPeer / NetworkPolicyEgressRule objects, passed
through as given (the API server validates them when the policy is applied).
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any

ENV = "LOOM_NETWORK_POLICY"
_KEYS = {"natsTo", "metricsFrom", "allowedCIDRs", "extraEgress"}


def _objects(doc: dict[str, Any], key: str) -> tuple[dict[str, Any], ...]:
    value = doc.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ValueError(f"{ENV}: {key} must be a list of objects")
    return tuple(value)


@dataclass(frozen=True)
class NetworkPolicySettings:
    """Peers and CIDRs the per-tier worker NetworkPolicy needs from outside the spec."""

    #: Where NATS runs (e.g. the bundled server's namespace and pod labels); empty: anywhere on its port.
    nats_to: tuple[dict[str, Any], ...] = ()
    #: Who may scrape worker metrics besides pods of the worker's own namespace.
    metrics_from: tuple[dict[str, Any], ...] = ()
    #: Further CIDRs worker pods may reach on their model ports (besides RouterPolicy allowedNetworks).
    allowed_cidrs: tuple[str, ...] = ()
    #: Extra egress rules appended to every worker policy (e.g. an in-cluster embedding server).
    extra_egress: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    @classmethod
    def from_json(cls, text: str) -> NetworkPolicySettings:
        """Parse ``LOOM_NETWORK_POLICY``; raises ValueError naming what is wrong."""
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"{ENV} is not JSON: {exc}") from None
        if not isinstance(doc, dict) or set(doc) - _KEYS:
            raise ValueError(f"{ENV} must be an object with keys among {', '.join(sorted(_KEYS))}")
        cidrs = doc.get("allowedCIDRs") or []
        if not isinstance(cidrs, list):
            raise ValueError(f"{ENV}: allowedCIDRs must be a list of CIDRs")
        for cidr in cidrs:
            try:
                ipaddress.ip_network(str(cidr), strict=True)
            except ValueError as exc:
                raise ValueError(
                    f"{ENV}: allowedCIDRs: {cidr!r} is not a network in CIDR notation ({exc})"
                ) from None
        return cls(
            nats_to=_objects(doc, "natsTo"),
            metrics_from=_objects(doc, "metricsFrom"),
            allowed_cidrs=tuple(str(c) for c in cidrs),
            extra_egress=_objects(doc, "extraEgress"),
        )
