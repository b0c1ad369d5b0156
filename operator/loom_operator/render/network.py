"""Worker tier → a NetworkPolicy for its pods (pure): egress to DNS, NATS and model endpoints only,
metrics scrapes from the worker's namespace and the listed monitoring peers only.

A NetworkPolicy cannot name hosts, so the model endpoints are allowed as "any public address
on the tier's model ports" (443, plus the port of the tier's ``baseUrl``): everything minus
:data:`loom.llm.endpoints.NON_PUBLIC_NETWORKS`, the same ranges the worker's endpoint check
refuses. The RouterPolicy's ``modelEndpoints.allowedNetworks`` and the chart's
``networkPolicy.workerEgress.allowedCIDRs`` open private ranges on those ports. This is the
backstop to the endpoint check (which resolves names before every call): a name that resolves
differently at connect time, or code in a Worker that ignores the check, still cannot reach the
cluster network, the node or a cloud metadata service.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from loom.api import TierDefinition
from loom.api.router_policy import ModelEndpoints
from loom.llm.endpoints import NON_PUBLIC_NETWORKS
from loom.llm.factory import base_url_for
from loom_operator.network_settings import NetworkPolicySettings
from loom_operator.render.common import HEALTH_PORT, Owner, metadata, selector

DEFAULT_NATS_PORT = 4222
_DEFAULT_PORTS = {"http": 80, "https": 443}


def nats_ports(nats_url: str) -> list[int]:
    """The ports of a NATS URL list (``nats://a:4222,tls://b:4223``); 4222 where none is given."""
    ports = set()
    for url in nats_url.split(","):
        parts = urlsplit(url.strip() if "://" in url else f"nats://{url.strip()}")
        ports.add(parts.port or DEFAULT_NATS_PORT)
    return sorted(ports)


def model_ports(tier: TierDefinition) -> list[int]:
    """443 and the port of the tier's model endpoint, unless that endpoint is in the pod itself."""
    ports = {443}
    url = base_url_for(tier, {})
    if url:
        parts = urlsplit(url)
        host = (parts.hostname or "").strip("[]")
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            ports.add(parts.port or _DEFAULT_PORTS.get(parts.scheme, 443))
    return sorted(ports)


def public_peers() -> list[dict[str, Any]]:
    """Every address but the non-public ranges, IPv4 and IPv6."""
    v4 = [n for n in NON_PUBLIC_NETWORKS if ipaddress.ip_network(n).version == 4]
    v6 = [n for n in NON_PUBLIC_NETWORKS if ipaddress.ip_network(n).version == 6]
    return [
        {"ipBlock": {"cidr": "0.0.0.0/0", "except": v4}},
        {"ipBlock": {"cidr": "::/0", "except": v6}},
    ]


def _tcp(ports: Iterable[int]) -> list[dict[str, Any]]:
    return [{"port": p, "protocol": "TCP"} for p in ports]


def worker_network_policy(
    owner: Owner,
    name: str,
    tier: TierDefinition,
    *,
    nats_url: str,
    network: NetworkPolicySettings,
    endpoints: ModelEndpoints | None = None,
) -> dict[str, Any]:
    """The NetworkPolicy ``name`` for the pods of one Worker tier."""
    extra_cidrs = dict.fromkeys([*(endpoints.allowed_networks if endpoints else []), *network.allowed_cidrs])
    nats_rule: dict[str, Any] = {"ports": _tcp(nats_ports(nats_url))}
    if network.nats_to:
        nats_rule["to"] = list(network.nats_to)
    egress: list[dict[str, Any]] = [
        {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]},
        nats_rule,
        {
            "ports": _tcp(model_ports(tier)),
            "to": [*public_peers(), *({"ipBlock": {"cidr": c}} for c in extra_cidrs)],
        },
        *network.extra_egress,
    ]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(owner, name, tier.name),
        "spec": {
            "podSelector": {"matchLabels": selector(owner, tier.name)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                {
                    "ports": _tcp([HEALTH_PORT]),
                    "from": [{"podSelector": {}}, *network.metrics_from],
                }
            ],
            "egress": egress,
        },
    }
