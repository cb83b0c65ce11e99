"""Reaching the next server: opening its stream (OutAddress, the client's own address, or
the original destination under TransparentProxy), the PROXY header that may open it
(OutProxyProtocol), and the TLS handshake (OutTLS), each under TimeOut.  `Upstream`
(upstream.py) calls these and keeps the stream; every failure is an `UpstreamFailure`,
which the client sees as 421 with the real error in the log (B13)."""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable

import trio

from trio_proxsmtp.common.address import IP_TRANSPARENT, AddressKind, format_host
from trio_proxsmtp.protocol.errors import RemoteError
from trio_proxsmtp.protocol.proxy_header_build import client_header, encode
from trio_proxsmtp.relay.client_info import ClientInfo, NoOriginalDestination
from trio_proxsmtp.relay.endings import Ending, upstream_unavailable
from trio_proxsmtp.relay.settings import OutProxyProtocol, TransparentMode, UpstreamSettings
from trio_proxsmtp.relay.tls_streams import TLSStream, tls_stream

__all__ = [
    "Opener",
    "UpstreamFailure",
    "connect_upstream",
    "open_upstream",
    "os_error",
    "proxy_header",
    "relay_name",
    "server_hostname",
    "tls_handshake",
]

# Opens the upstream stream and names it (SERVER for the filter): tests pass a memory stream.
Opener = Callable[[], Awaitable[tuple[trio.abc.Stream, str]]]


class UpstreamFailure(Ending, RemoteError):
    """The upstream could not be reached, went away, timed out or broke the protocol; the
    client is told 421 with `reason` (the real error is the message, for the log)."""

    def __init__(
        self, message: str, reason: str, status: str = "4.4.1", connect: str | None = None
    ) -> None:
        super().__init__(message, upstream_unavailable(reason, status))
        self.reason = reason  # the short form the client sees in its 421
        self.status = status  # the enhanced status code of that 421 (4.7.0 for TLS)
        self.ended = f"upstream {reason}"
        self.connect = connect  # upstream_connect_failures_total{reason} (connect_upstream)


def target_name(settings: UpstreamSettings, info: ClientInfo) -> str:
    """The next server as a failure names it."""
    if info.original_destination is not None:
        host, port = info.original_destination
        return f"{host}:{port}"
    return str(settings.address)


async def connect_upstream(
    opener: Opener, settings: UpstreamSettings, info: ClientInfo
) -> tuple[trio.abc.Stream, str]:
    """The opened stream and its name, under TimeOut."""
    with trio.move_on_after(settings.timeout):
        try:
            return await opener()
        except OSError as exc:
            raise UpstreamFailure(
                f"SERVER: couldn't connect to: {target_name(settings, info)}: {os_error(exc)}",
                "unavailable",
                connect="refused",
            ) from exc
    raise UpstreamFailure(
        f"SERVER: couldn't connect to: {target_name(settings, info)}: timed out",
        "unavailable",
        connect="timeout",
    )


def proxy_header(settings: UpstreamSettings, info: ClientInfo) -> bytes | None:
    """OutProxyProtocol's header for this client (docs/behaviour.md §11.13): the client's
    address and port, and the address it connected to (the balancer's front when it came
    through one: ClientInfo holds the PROXY header's addresses then); None when off."""
    mode = settings.proxy_protocol
    if mode is OutProxyProtocol.OFF:
        return None
    version = 1 if mode is OutProxyProtocol.V1 else 2
    destination = info.local if info.local_port is not None else None
    header = client_header(version, info.client, info.client_port, destination, info.local_port)
    return encode(header)


async def open_upstream(
    settings: UpstreamSettings, info: ClientInfo, log: logging.LoggerAdapter[logging.Logger]
) -> tuple[trio.abc.Stream, str]:
    """The default opener: a TCP or unix stream to the next server, and its name."""
    if settings.transparent is not TransparentMode.OFF:
        try:
            host, port = info.lookup_original_destination()
        except NoOriginalDestination as exc:
            raise UpstreamFailure(
                f"couldn't get source address for transparent proxying: {exc}",
                "unavailable",
            ) from exc
        if host == info.client:
            raise UpstreamFailure("loop detected in transparent proxying", "unavailable")
        if settings.transparent is TransparentMode.FULL:
            return await _open_transparent(info, log, host, port), host
        return await trio.open_tcp_stream(host, port), host
    address = settings.address
    assert address is not None
    if address.kind is AddressKind.UNIX:
        assert address.path is not None
        return await trio.open_unix_socket(address.path), address.path
    # Port only: the loopback feature, the client's own address (docs/behaviour.md).
    target = info.client if address.is_port_only else address.host
    assert target is not None
    stream = await trio.open_tcp_stream(target, address.port)
    return stream, format_host(stream.socket.getpeername())


async def _open_transparent(
    info: ClientInfo, log: logging.LoggerAdapter[logging.Logger], host: str, port: int
) -> trio.SocketStream:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        try:
            sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
            await sock.bind((info.client, 0))
        except OSError as exc:
            log.debug("couldn't bind to the client's address: %s", exc)
        await sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


def server_hostname(settings: UpstreamSettings, reached: str) -> str | None:
    """The name checked in the next server's certificate (and sent as SNI when it is a
    name): OutTLSServerName, else the OutAddress host, else the address we `reached` (the
    client's own or original destination; None for a Unix socket)."""
    name = settings.tls_hostname
    if name is not None:
        return name
    address = settings.address
    if address is not None and address.kind is AddressKind.UNIX:
        return None
    return reached or None


async def tls_handshake(
    stream: trio.abc.Stream,
    settings: UpstreamSettings,
    name: str | None,
    reached: str,
    session: ssl.SSLSession | None = None,
) -> TLSStream:
    """The TLS handshake over `stream` under TimeOut, offering `session` for resumption
    (relay/tls_sessions.py; the server may decline: then a full handshake).  Never falls
    back to plain text: a failure is an `UpstreamFailure` whose log line says why
    (certificate verification, timeout, a closed connection), and the client gets 421
    4.7.0."""
    context = settings.tls_context
    assert context is not None, "OutTLS is on, so the config loader built its context"
    tls = tls_stream(stream, context, server_hostname=name)  # (closes with a close_notify)
    if session is not None:
        tls.session = session  # forwarded to the SSLObject, before its handshake
    with trio.move_on_after(settings.timeout) as scope:
        try:
            await tls.do_handshake()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            cause = exc.__cause__
            if isinstance(cause, ssl.SSLCertVerificationError):
                why = f"certificate verification failed: {cause.verify_message}"
            elif cause is not None:
                why = str(cause) or type(cause).__name__
            else:
                why = "connection closed"
            raise UpstreamFailure(
                f"SERVER: TLS handshake failed with {name or reached}: {why}",
                "TLS handshake failed",
                "4.7.0",
            ) from exc
    if scope.cancelled_caught:
        raise UpstreamFailure(
            "network operation timed out: upstream TLS handshake",
            "TLS handshake timed out",
            "4.7.0",
        )
    return tls


def relay_name(stream: trio.abc.Stream, fallback: str) -> str:
    """``host:port`` (``[v6]:port``) of a TCP peer, as the summary's relay=; `fallback`
    (the socket path, or what a test's opener said) for anything else."""
    if isinstance(stream, trio.SocketStream):
        with contextlib.suppress(OSError):
            peer = stream.socket.getpeername()
            if isinstance(peer, tuple) and len(peer) >= 2:
                host = format_host(peer)
                return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    return fallback


def os_error(exc: OSError) -> str:
    """The real reason of a failed connect (B13): trio.open_tcp_stream raises a summary
    ("all attempts to connect ... failed") caused by the attempts' own errors."""
    reasons: list[str] = []
    cause = exc.__cause__
    causes = cause.exceptions if isinstance(cause, BaseExceptionGroup) else [cause]
    for error in causes:
        if isinstance(error, OSError) and error.strerror and error.strerror not in reasons:
            reasons.append(error.strerror)
    if reasons:
        return "; ".join(reasons)
    return exc.strerror or str(exc)
