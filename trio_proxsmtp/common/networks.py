"""IP networks as options name them (ProxyProtocolFrom, ConnectionLimitExceptions) and the
test of a peer against them."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

__all__ = ["DEFAULT_TRUSTED_NETWORKS", "IPNetwork", "is_trusted", "parse_networks"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
DEFAULT_TRUSTED_NETWORKS: tuple[IPNetwork, ...] = (
    ipaddress.IPv4Network("127.0.0.0/8"),
    ipaddress.IPv6Network("::1/128"),
)


def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    """ProxyProtocolFrom's value: comma-separated addresses or networks (CIDR).

    Raises ValueError with the reason (the config loader adds file, line and option).
    """
    networks: list[IPNetwork] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            raise ValueError(f"empty entry in {text!r} (comma-separated addresses or networks)")
        if item.startswith("[") and item.endswith("]"):
            item = item[1:-1]
        try:
            networks.append(ipaddress.ip_network(item, strict=True))
        except ValueError as exc:
            raise ValueError(f"not an IP address or network: {item!r} ({exc})") from None
    return tuple(networks)


def is_trusted(peer: str, networks: Iterable[IPNetwork]) -> bool:
    """True if `peer` (socket peer address text) may send a PROXY header.

    IPv4 peers on a dual-stack IPv6 socket (``::ffff:127.0.0.1``) count as IPv4.  A peer
    without an IP address (a unix socket: "" or a path) is trusted.
    """
    try:
        address = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return True
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)
