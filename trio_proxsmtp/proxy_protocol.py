"""`ProxyProtocol: on`: read a load balancer's PROXY header at accept, before any SMTP.

The header says who the real client is; it is believed only from `ProxyProtocolFrom`
(trusted networks, loopback by default), because anyone who may send one can claim any
address.  A connection from elsewhere is refused before a byte is read; one whose header
is missing, invalid or late (`deadline`) is refused too.  Each refusal is a
`ProxyProtocolError` subclass whose text is the log line.

The bytes the client sent after the header (an early talker's EHLO) are returned with the
header: they are the first bytes of the SMTP stream.

Unix-socket listeners: a peer without an IP address (a unix socket) is trusted, since the
socket file's permissions already decide who may connect.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

import attrs
import trio

from trio_proxsmtp.protocol.proxy_header import (
    NEED_MORE,
    ParsedProxyHeader,
    ProxyCommand,
    ProxyHeader,
    ProxyHeaderError,
    ProxyHeaderParser,
)

__all__ = [
    "DEFAULT_HEADER_TIMEOUT",
    "DEFAULT_TRUSTED_NETWORKS",
    "IPNetwork",
    "InvalidProxyHeader",
    "PrefixedStream",
    "ProxiedClient",
    "ProxyHeaderTimeout",
    "ProxyProtocolError",
    "ProxyResult",
    "UntrustedProxySource",
    "is_trusted",
    "parse_networks",
    "read_proxy_header",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
DEFAULT_TRUSTED_NETWORKS: tuple[IPNetwork, ...] = (
    ipaddress.IPv4Network("127.0.0.0/8"),
    ipaddress.IPv6Network("::1/128"),
)
# A balancer writes the header at once with the connection; seconds, not TimeOut's minutes.
DEFAULT_HEADER_TIMEOUT = 5.0
_RECEIVE_SIZE = 4096


class ProxyProtocolError(Exception):
    """The connection is to be closed: its PROXY header is missing, wrong, late or untrusted.

    `reason` is the label for metrics.connection_refused; str() is the log line.
    """

    reason = "proxy"


class UntrustedProxySource(ProxyProtocolError):
    """The peer is not in ProxyProtocolFrom: its header would not be believed."""

    reason = "proxy-untrusted"


class InvalidProxyHeader(ProxyProtocolError):
    """The connection did not start with a valid PROXY header (or closed before one)."""

    reason = "proxy-invalid"


class ProxyHeaderTimeout(ProxyProtocolError):
    """The header did not arrive before the deadline."""

    reason = "proxy-timeout"


@attrs.frozen
class ProxiedClient:
    """The real client's identity as the header gives it (the socket's peer is the balancer)."""

    client_address: str  # IP address text, or a unix path (v2 AF_UNIX)
    client_port: int | None
    destination_address: str | None  # where the client connected to (the balancer's front)
    destination_port: int | None


@attrs.frozen
class ProxyResult:
    header: ProxyHeader
    # None when the header names no client (LOCAL health check, v1 UNKNOWN, v2 UNSPEC):
    # then the socket's own endpoints are the client's.
    client: ProxiedClient | None
    remainder: bytes  # what followed the header: feed it to the SMTP layer first

    @property
    def is_health_check(self) -> bool:
        """v2 LOCAL: the balancer's own connection (e.g. HAProxy's `option smtpchk`)."""
        return self.header.command is ProxyCommand.LOCAL


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


def _client_of(header: ProxyHeader) -> ProxiedClient | None:
    if not header.has_client or header.source_address is None:
        return None
    return ProxiedClient(
        header.source_address,
        header.source_port,
        header.destination_address,
        header.destination_port,
    )


async def read_proxy_header(
    stream: trio.abc.ReceiveStream,
    peer: str,
    trusted_networks: Iterable[IPNetwork],
    deadline: float,
) -> ProxyResult:
    """Read the PROXY header (v1 or v2) that must start the stream, by `deadline` (trio time).

    `peer` is the socket's peer address text (address.format_host of getpeername()).
    Raises UntrustedProxySource (before reading anything), InvalidProxyHeader or
    ProxyHeaderTimeout; never reads more than one receive past the header.
    """
    if not is_trusted(peer, trusted_networks):
        raise UntrustedProxySource(f"PROXY header not accepted from {peer} (ProxyProtocolFrom)")
    parser = ProxyHeaderParser()
    try:
        with trio.fail_at(deadline):
            while True:
                data = await stream.receive_some(_RECEIVE_SIZE)
                if not data:
                    raise InvalidProxyHeader(
                        f"{peer} closed the connection before a complete PROXY header"
                    )
                result = parser.feed(data)
                if result is not NEED_MORE:
                    break
    except trio.TooSlowError:
        raise ProxyHeaderTimeout(f"no PROXY header from {peer} in time") from None
    except ProxyHeaderError as exc:
        raise InvalidProxyHeader(f"invalid PROXY header from {peer}: {exc.reason}") from None
    assert isinstance(result, ParsedProxyHeader)
    return ProxyResult(result.header, _client_of(result.header), result.remainder)


class PrefixedStream(trio.abc.Stream):
    """A stream whose first bytes were already read (with its PROXY header): they come
    back first, then the stream's own. For a TLS listener behind a balancer, where the
    client's handshake may follow the header in the same segment."""

    def __init__(self, stream: trio.abc.Stream, prefix: bytes) -> None:
        self.stream = stream
        self._prefix = prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._prefix:
            size = len(self._prefix) if max_bytes is None else max_bytes
            data, self._prefix = self._prefix[:size], self._prefix[size:]
            await trio.lowlevel.checkpoint()
            return data
        return await self.stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        if isinstance(self.stream, trio.abc.HalfCloseableStream):
            await self.stream.send_eof()

    async def aclose(self) -> None:
        await self.stream.aclose()
