"""`ProxyProtocol: on`: read a load balancer's PROXY header at accept, before any SMTP.

The header says who the real client is; it is believed only from `ProxyProtocolFrom`
(trusted networks, loopback by default), because anyone who may send one can claim any
address.  A connection from elsewhere is refused before a byte is read; one whose header
is missing, invalid or late (`deadline`) is refused too.  Each refusal is a
`ProxyProtocolError` subclass (a `RemoteError`: the peer's fault) whose text is the log
line; proxy_accept.py logs it and closes the connection.

The bytes the client sent after the header (an early talker's EHLO) are returned with the
header: they are the first bytes of the SMTP stream.

Unix-socket listeners: a peer without an IP address (a unix socket) is trusted, since the
socket file's permissions already decide who may connect.
"""

from __future__ import annotations

from collections.abc import Iterable

import trio

from trio_proxsmtp.common.networks import IPNetwork, is_trusted
from trio_proxsmtp.protocol.errors import RemoteError
from trio_proxsmtp.protocol.proxy_header import (
    NEED_MORE,
    ParsedProxyHeader,
    ProxyHeader,
    ProxyHeaderError,
    ProxyHeaderParser,
)
from trio_proxsmtp.relay.client_info import ProxiedClient, ProxyResult

__all__ = [
    "DEFAULT_HEADER_TIMEOUT",
    "InvalidProxyHeader",
    "PrefixedStream",
    "ProxyHeaderTimeout",
    "ProxyProtocolError",
    "UntrustedProxySource",
    "read_proxy_header",
]

# A balancer writes the header at once with the connection; seconds, not TimeOut's minutes.
DEFAULT_HEADER_TIMEOUT = 5.0
_RECEIVE_SIZE = 4096


class ProxyProtocolError(RemoteError):
    """The connection is to be closed: its PROXY header is missing, wrong, late or untrusted.

    The peer's fault (a balancer, or whoever connected in its place): logged, no traceback;
    the connection closes without a reply (`reply` None).  `reason` is the label for
    metrics.connection_refused; str() is the log line.
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
