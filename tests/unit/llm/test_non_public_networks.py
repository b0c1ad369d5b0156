"""The non-public ranges the egress NetworkPolicy excepts are the ones the worker's endpoint check refuses."""

from __future__ import annotations

import ipaddress

import pytest

from loom.llm.endpoints import NON_PUBLIC_NETWORKS, EndpointRules, address_problem

RULES = EndpointRules.build()


@pytest.mark.parametrize("cidr", NON_PUBLIC_NETWORKS)
def test_every_address_of_a_non_public_range_is_refused_unless_listed(cidr: str) -> None:
    net = ipaddress.ip_network(cidr)
    for address in (net[0], net[net.num_addresses // 2], net[-1]):
        assert address_problem(address, RULES) is not None, address
        if not address.is_loopback:  # loopback stays refused outside local mode whatever is listed
            assert address_problem(address, EndpointRules.build(networks=[cidr])) is None


def test_the_ranges_named_by_the_security_review_are_covered() -> None:
    nets = [ipaddress.ip_network(n) for n in NON_PUBLIC_NETWORKS]
    for cidr in ("169.254.0.0/16", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10"):
        assert ipaddress.ip_network(cidr) in nets
    for cidr in ("fc00::/7", "fe80::/10"):
        assert ipaddress.ip_network(cidr) in nets
    for metadata in ("169.254.169.254", "169.254.170.2", "100.100.100.200", "fd00:ec2::254"):
        assert any(ipaddress.ip_address(metadata) in n for n in nets)


@pytest.mark.parametrize("public", ["1.1.1.1", "8.8.8.8", "160.79.104.10", "2606:4700::1111"])
def test_public_addresses_stay_allowed(public: str) -> None:
    address = ipaddress.ip_address(public)
    assert address_problem(address, RULES) is None
    assert not any(address in ipaddress.ip_network(n) for n in NON_PUBLIC_NETWORKS)
