"""Socket addresses as proxsmtpd's config writes them (docs/behaviour.md §2.1), plus bracketed IPv6.

Parsing is pure: host names are checked for shape here and resolved by `resolve_tcp`, so
that the config loader can turn an unresolvable name into a config error at start-up and
the server can use every result (the reference used only the first, which broke IPv6, B11).
"""

from __future__ import annotations

import enum
import ipaddress
import re
import socket
from typing import Any

import attrs

# Linux's socket option for transparent mode (TransparentProxy; Python names it from 3.13).
IP_TRANSPARENT = getattr(socket, "IP_TRANSPARENT", 19)
# sun_path is 108 bytes including the terminating NUL.
_SUN_PATH_MAX = 108
_HOST_NAME_MAX = 255

_PORT_RE = re.compile(r"[0-9]{1,5}")
_IPV4_RE = re.compile(r"([0-9]{1,3}(?:\.[0-9]{1,3}){3})(?::([^:]*))?")
_IPV6_RE = re.compile(r"\[([^\]]*)\](?::(.*))?")
_HOST_RE = re.compile(r"([A-Za-z][^:\s/\\]*)(?::(.*))?")


class AddressKind(enum.Enum):
    TCP = "tcp"
    UNIX = "unix"


@attrs.frozen
class Address:
    """One Listen or OutAddress value, parsed but not resolved."""

    kind: AddressKind
    host: str | None
    port: int
    path: str | None
    text: str

    @property
    def is_port_only(self) -> bool:
        """True for the wildcard forms: proxsmtpd's "connect back to the client" feature."""
        return self.kind is AddressKind.TCP and self.host in (None, "0.0.0.0", "::")

    def __str__(self) -> str:
        return self.text


def _parse_port(text: str) -> int:
    if not _PORT_RE.fullmatch(text):
        raise ValueError(f"invalid port: {text!r}")
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port out of range 1..65535: {port}")
    return port


def _optional_port(text: str | None, default_port: int) -> int:
    return default_port if text is None else _parse_port(text)


def parse_address(text: str, default_port: int) -> Address:
    """Parse a Listen/OutAddress value; raise ValueError(reason) if it is none of the forms."""
    value = text.strip()
    if not value:
        raise ValueError("empty address")

    if value.isascii() and value.isdigit():
        return Address(AddressKind.TCP, None, _parse_port(value), None, value)

    m = _IPV6_RE.fullmatch(value)
    if m:
        try:
            ipaddress.IPv6Address(m.group(1))
        except ValueError:
            raise ValueError(f"invalid IPv6 address: {m.group(1)!r}") from None
        port = _optional_port(m.group(2), default_port)
        return Address(AddressKind.TCP, m.group(1), port, None, value)

    m = _IPV4_RE.fullmatch(value)
    if m:
        try:
            ipaddress.IPv4Address(m.group(1))
        except ValueError:
            raise ValueError(f"invalid IPv4 address: {m.group(1)!r}") from None
        port = _optional_port(m.group(2), default_port)
        return Address(AddressKind.TCP, m.group(1), port, None, value)

    if ":" not in value and "/" in value:
        if len(value.encode("utf-8", "surrogateescape")) >= _SUN_PATH_MAX:
            raise ValueError(f"unix socket path too long (max {_SUN_PATH_MAX - 1} bytes)")
        return Address(AddressKind.UNIX, None, 0, value, value)

    m = _HOST_RE.fullmatch(value)
    if m:
        host = m.group(1)
        if len(host) >= _HOST_NAME_MAX:
            raise ValueError(f"host name too long (max {_HOST_NAME_MAX - 1} characters)")
        port = _optional_port(m.group(2), default_port)
        return Address(AddressKind.TCP, host, port, None, value)

    try:
        ipaddress.IPv6Address(value)
    except ValueError:
        pass
    else:
        raise ValueError("IPv6 addresses must be written in brackets, e.g. [::1]:25")
    raise ValueError("not a port, IP address[:port], [IPv6][:port], socket path or host[:port]")


def resolve_tcp(address: Address) -> list[tuple[int, tuple[Any, ...]]]:
    """Resolve a TCP address to (family, sockaddr) pairs, in getaddrinfo order, no duplicates.

    Port-only means all IPv4 interfaces, as in proxsmtpd. Raises OSError (socket.gaierror)
    when the name does not resolve and ValueError for a unix address.
    """
    if address.kind is not AddressKind.TCP:
        raise ValueError("not a TCP address")
    if address.host is None:
        return [(socket.AF_INET, ("0.0.0.0", address.port))]
    flags = 0
    try:
        ipaddress.ip_address(address.host)
    except ValueError:
        pass
    else:
        flags = socket.AI_NUMERICHOST
    infos = socket.getaddrinfo(
        address.host, address.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=flags
    )
    result: list[tuple[int, tuple[Any, ...]]] = []
    for family, _type, _proto, _canon, sockaddr in infos:
        item = (int(family), tuple(sockaddr))
        if item not in result:
            result.append(item)
    return result


def format_host(sockaddr: object) -> str:
    """The host part of a socket address as proxsmtpd prints it: no port, no brackets."""
    if sockaddr is None:
        return ""
    if isinstance(sockaddr, tuple):
        return str(sockaddr[0]) if sockaddr else ""
    if isinstance(sockaddr, bytes | bytearray):
        return bytes(sockaddr).decode("utf-8", "backslashreplace")
    return str(sockaddr)
