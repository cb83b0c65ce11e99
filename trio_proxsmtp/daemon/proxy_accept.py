"""`ProxyProtocol: on` at accept: a connection whose client is named by its PROXY header.

Each accepted connection reads its PROXY header in its own task, never in the accept
loop, within DEFAULT_HEADER_TIMEOUT (proxy_protocol.py).  Until the header is read,
`AwaitingHeader` stands in the server's connections: it counts toward MaxConnections from
accept (the limit counts connections, not addresses: a header changes nothing there), and
a shutdown closes it at once (it has not said who it is yet).

`read_client` reads the header and says who the client is: a missing, invalid, late or
untrusted header is logged, counted as refused (its `reason`) and gives None, and the
server closes the connection.  `client_info.from_proxy_header` turns the header into the
`ClientInfo`.  What followed the header is the start of the client's stream: for
ListenTLS behind a balancer, the TLS handshake (`PrefixedStream`); else the first SMTP
bytes, which the server feeds to the session's reader.
"""

from __future__ import annotations

import ssl

import attrs
import trio

from trio_proxsmtp.common.log import connection_logger
from trio_proxsmtp.common.metrics import Metrics
from trio_proxsmtp.config.model import Config
from trio_proxsmtp.daemon.proxy_protocol import (
    DEFAULT_HEADER_TIMEOUT,
    PrefixedStream,
    ProxyProtocolError,
    read_proxy_header,
)
from trio_proxsmtp.relay.client_info import (
    ClientInfo,
    ProxyResult,
    from_proxy_header,
    from_socket_stream,
)
from trio_proxsmtp.relay.settings import TransparentMode

__all__ = ["AwaitingHeader", "NamedClient", "read_client"]


class AwaitingHeader:
    """A connection whose PROXY header is being read, as `Server.connections` sees it."""

    def __init__(
        self, stream: trio.SocketStream, conn_id: str, implicit_tls: ssl.SSLContext | None
    ) -> None:
        self.stream = stream
        self.conn_id = conn_id
        self.implicit_tls = implicit_tls
        self.scope = trio.CancelScope()

    def drain(self) -> None:
        self.scope.cancel()

    def cancel(self) -> None:
        self.scope.cancel()


@attrs.frozen
class NamedClient:
    """Who the header says the client is, and its stream from after the header."""

    info: ClientInfo
    stream: trio.abc.Stream
    remainder: bytes  # the first bytes of the SMTP stream, for the session's reader


async def read_client(
    waiting: AwaitingHeader, config: Config, metrics: Metrics
) -> NamedClient | None:
    """Read `waiting`'s PROXY header; None when refused or closed by a shutdown (the
    caller closes the stream)."""
    stream = waiting.stream
    socket_info = from_socket_stream(stream)
    log = connection_logger(waiting.conn_id)
    result: ProxyResult | None = None
    try:
        with waiting.scope:
            result = await read_proxy_header(
                stream,
                socket_info.client,
                config.proxy_protocol_from,
                trio.current_time() + DEFAULT_HEADER_TIMEOUT,
            )
    except ProxyProtocolError as exc:
        log.error("%s: connection closed", exc)
        metrics.connection_refused(exc.reason)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        log.error("%s left before its PROXY header: %s", socket_info.client, exc)
        metrics.connection_refused("proxy-invalid")
    if result is None:
        return None
    transparent = config.transparent_proxy is not TransparentMode.OFF
    info = from_proxy_header(result, socket_info, transparent=transparent)
    if result.is_health_check:
        log.debug("PROXY LOCAL from %s: a health check", socket_info.client)
    else:
        log.debug("PROXY header from %s: client %s", socket_info.client, info.client)
    remainder = result.remainder
    client_stream: trio.abc.Stream = stream
    if waiting.implicit_tls is not None and remainder:
        # ListenTLS behind a balancer: what followed the header is the TLS handshake.
        client_stream, remainder = PrefixedStream(stream, remainder), b""
    return NamedClient(info, client_stream, remainder)
