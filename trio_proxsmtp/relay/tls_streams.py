"""The relay's TLS streams, towards the client and towards the next server, and what their
end looks like (docs/behaviour.md §11.21).

Our close sends a TLS `close_notify` alert (Trio's spec-compliant mode: one alert, no wait
for the peer's), so a peer never sees a session cut short at the TLS level (Exim logged
"The TLS connection was non-properly terminated" for each).  Nothing requires a peer's
close_notify in return: a peer that just closes its connection ends our read with
`BrokenResourceError` caused by `ssl.SSLEOFError` (where Trio's HTTPS mode returned b""),
which every read already takes for the peer leaving; `closed_without_notify` tells it
from a reset, for the log.  A close to a peer that does not read is bounded by the
connection's close deadline (connection.py).
"""

from __future__ import annotations

import ssl
from typing import TypeAlias

import trio

from trio_proxsmtp.common.tls_socket import SocketTLSStream

__all__ = ["TLSStream", "cipher_name", "closed_without_notify", "tls_stream"]

TLSStream: TypeAlias = SocketTLSStream | trio.SSLStream[trio.abc.Stream]


def tls_stream(
    stream: trio.abc.Stream,
    context: ssl.SSLContext,
    *,
    server_side: bool = False,
    server_hostname: str | None = None,
) -> TLSStream:
    """`stream` under TLS (no handshake yet); its `aclose` sends a close_notify.  On a
    socket, OpenSSL reads and writes the socket itself (common/tls_socket.py: about a
    third of the cost of `trio.SSLStream`'s memory buffers, bench/README.md); any other
    stream (a test's memory stream) goes through `trio.SSLStream`."""
    if isinstance(stream, trio.SocketStream):
        return SocketTLSStream(
            stream, context, server_side=server_side, server_hostname=server_hostname
        )
    return trio.SSLStream(stream, context, server_side=server_side, server_hostname=server_hostname)


def closed_without_notify(exc: BaseException) -> bool:
    """Whether a stream error is the TLS peer closing without a close_notify."""
    return isinstance(exc.__cause__, ssl.SSLEOFError)


def cipher_name(stream: TLSStream) -> str | None:
    """The name of the cipher a TLS stream negotiated (None before its handshake)."""
    cipher = stream.cipher()
    return cipher[0] if cipher else None
