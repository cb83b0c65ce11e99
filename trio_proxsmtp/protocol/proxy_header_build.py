"""The PROXY header's other direction: bytes from a `ProxyHeader` (v1 line, v2 binary),
the exact inverse of protocol/proxy_header.py's parser (a round-trip property test holds
them together).  `client_header` makes the header the proxy sends before each next-hop
connection under `OutProxyProtocol: v1 | v2` (docs/behaviour.md §11.13); the encoders also
serve the tests and the test peers as a balancer's header."""

from __future__ import annotations

import ipaddress
import struct

from trio_proxsmtp.protocol.proxy_header import (
    FAMILIES,
    TRANSPORTS,
    UNIX_PATH_LENGTH,
    V2_SIGNATURE,
    ProxyCommand,
    ProxyFamily,
    ProxyHeader,
    ProxyTransport,
)

__all__ = ["client_header", "encode", "encode_v1", "encode_v2"]

# The codes of the v2 header, the parser's tables turned round.
_FAMILY_CODES = {family: code for code, family in FAMILIES.items()}
_TRANSPORT_CODES = {transport: code for code, transport in TRANSPORTS.items()}
_IP = ipaddress.IPv4Address | ipaddress.IPv6Address


def encode_v1(header: ProxyHeader) -> bytes:
    """The v1 line for a header with an INET/INET6 client, else ``PROXY UNKNOWN``."""
    if header.family is ProxyFamily.INET:
        protocol = "TCP4"
    elif header.family is ProxyFamily.INET6:
        protocol = "TCP6"
    else:
        return b"PROXY UNKNOWN\r\n"
    return (
        f"PROXY {protocol} {header.source_address} {header.destination_address} "
        f"{header.source_port} {header.destination_port}\r\n"
    ).encode("ascii")


def encode_v2(header: ProxyHeader, extra_tlvs: tuple[tuple[int, bytes], ...] = ()) -> bytes:
    """The v2 header; `extra_tlvs` are appended after the header's own (any type)."""
    command_code = 1 if header.command is ProxyCommand.PROXY else 0
    family = header.family
    block = b""
    if header.command is ProxyCommand.PROXY:
        if family is ProxyFamily.INET or family is ProxyFamily.INET6:
            ip_type = ipaddress.IPv4Address if family is ProxyFamily.INET else ipaddress.IPv6Address
            block = (
                ip_type(header.source_address).packed
                + ip_type(header.destination_address).packed
                + struct.pack("!HH", header.source_port or 0, header.destination_port or 0)
            )
        elif family is ProxyFamily.UNIX:
            block = b"".join(
                (path or "").encode("utf-8", "surrogateescape").ljust(UNIX_PATH_LENGTH, b"\x00")
                for path in (header.source_address, header.destination_address)
            )
    tlvs = b"".join(
        struct.pack("!BH", kind, len(value)) + value for kind, value in header.tlvs + extra_tlvs
    )
    body = block + tlvs
    return (
        V2_SIGNATURE
        + bytes(
            [0x20 | command_code, _FAMILY_CODES[family] << 4 | _TRANSPORT_CODES[header.transport]]
        )
        + struct.pack("!H", len(body))
        + body
    )


def encode(header: ProxyHeader) -> bytes:
    """The header in its own version's form."""
    return encode_v1(header) if header.version == 1 else encode_v2(header)


def _ip(text: str | None) -> _IP | None:
    """An IP address (an IPv4-mapped IPv6 one as IPv4, a scope dropped), or None."""
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def client_header(
    version: int,
    client: str,
    client_port: int | None,
    destination: str | None,
    destination_port: int | None,
) -> ProxyHeader:
    """The header that names a client to the next hop: its address and port, and the
    address and port it connected to.  A client without an IP address (a unix peer) is
    v1 UNKNOWN / v2 LOCAL (the next hop uses the connection's own endpoints); a
    destination that is missing or of the other family is the unspecified address, port 0
    (the header's two addresses share one family)."""
    source = _ip(client)
    if source is None:
        return ProxyHeader(version, ProxyCommand.LOCAL, ProxyFamily.UNSPEC, ProxyTransport.UNSPEC)
    target = _ip(destination)
    if target is None or target.version != source.version:
        target = ipaddress.ip_address("0.0.0.0" if source.version == 4 else "::")
        destination_port = 0
    return ProxyHeader(
        version,
        ProxyCommand.PROXY,
        ProxyFamily.INET if source.version == 4 else ProxyFamily.INET6,
        ProxyTransport.STREAM,
        source_address=str(source),
        source_port=client_port or 0,
        destination_address=str(target),
        destination_port=destination_port or 0,
    )
