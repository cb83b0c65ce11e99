"""Who the client is: one value built at accept and handed to the connection.

`ClientInfo` carries the peer's and our local address and, for transparent proxying, the
original destination.  `from_socket_stream` fills it from the accepted socket;
`from_proxy_header` from a PROXY-protocol header (ProxyProtocol: on), whose client is the
client everywhere: logs, CLIENT, XCLIENT, Header's %i, TransparentProxy.  Two capabilities need
the socket itself, so they are optional: `socket` is None for a stream that has none (a
memory stream in tests), and then the connection falls back to what a stream can tell.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Callable

import attrs
import trio

from trio_proxsmtp.common.address import format_host
from trio_proxsmtp.protocol.errors import LocalError
from trio_proxsmtp.protocol.proxy_header import ProxyCommand, ProxyHeader
from trio_proxsmtp.relay.endings import Ending, upstream_unavailable

__all__ = [
    "NAME_LOOKUP_TIMEOUT",
    "ClientInfo",
    "NoOriginalDestination",
    "client_host_name",
    "from_proxy_header",
    "from_socket_stream",
]

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
IP6T_SO_ORIGINAL_DST = 80  # linux/netfilter_ipv6/ip6_tables.h


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


class NoOriginalDestination(Ending, LocalError):
    """The kernel could not tell where the client meant to connect (TransparentProxy):
    no upstream for this client, which is told 421 4.4.1.  (The upstream raises it as an
    `UpstreamFailure` saying what it was for.)"""

    ended = "upstream unavailable"

    def __init__(self, message: str) -> None:
        super().__init__(message, upstream_unavailable("unavailable"))


@attrs.define
class ClientInfo:
    client: str  # CLIENT: the peer's address ("" for an unnamed unix peer)
    local: str  # %l in Header: the address it connected to
    is_ipv6: bool = False
    # Set by the transparent-proxy lookup (or a PROXY header) before the upstream connects.
    original_destination: tuple[str, int] | None = None
    # The accepted socket, when there is one: SO_ORIGINAL_DST and the departed-client peek.
    socket: trio.socket.SocketType | None = attrs.field(default=None, repr=False, eq=False)
    # Client identity (issue 23): the client's port and the port it connected to (the
    # PROXY header's when there is one); None when not known (a unix peer, a test stream).
    client_port: int | None = None
    local_port: int | None = None

    def lookup_original_destination(self) -> tuple[str, int]:
        """Where the client connected before NAT redirected it to us (TransparentProxy)."""
        if self.original_destination is not None:
            return self.original_destination
        sock = self.socket
        if sock is None:
            raise NoOriginalDestination("no socket to ask for the original destination")
        try:
            if sock.family == socket.AF_INET6:
                raw = sock.getsockopt(socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, 28)
                port = struct.unpack_from("!H", raw, 2)[0]
                host = socket.inet_ntop(socket.AF_INET6, raw[8:24])
            else:
                raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
                port = struct.unpack_from("!H", raw, 2)[0]
                host = socket.inet_ntop(socket.AF_INET, raw[4:8])
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOPROTOOPT):
                raise NoOriginalDestination(str(exc)) from exc
            # No NAT entry (TPROXY): the local address is the original destination.
            host, port = sock.getsockname()[:2]
        self.original_destination = (host, port)
        return host, port


def from_socket_stream(stream: trio.SocketStream) -> ClientInfo:
    """The identity of a client accepted on a socket."""
    sock = stream.socket
    peer = _address(sock.getpeername)
    local = _address(sock.getsockname)
    return ClientInfo(
        client=format_host(peer),
        local=format_host(local),
        is_ipv6=sock.family == socket.AF_INET6,
        socket=sock,
        client_port=_port(peer),
        local_port=_port(local),
    )


def from_proxy_header(
    result: ProxyResult, socket_info: ClientInfo, *, transparent: bool = False
) -> ClientInfo:
    """The client a PROXY header names, in place of the socket's peer (the balancer).

    Its address is the client; the address it connected to (the balancer's front) is the
    local one (%l) and, with `transparent` (TransparentProxy on), the original destination.
    A header that names no client (v2 LOCAL health checks, v1 UNKNOWN) leaves the socket's
    own.  The socket stays: it still tells whether the client has left.
    """
    client = result.client
    if client is None:
        return socket_info
    destination = None
    if client.destination_address is not None and client.destination_port is not None:
        destination = (client.destination_address, client.destination_port)
    return ClientInfo(
        client=client.client_address,
        local=client.destination_address or socket_info.local,
        is_ipv6=":" in client.client_address,
        original_destination=destination if transparent else None,
        socket=socket_info.socket,
        client_port=client.client_port,
        local_port=client.destination_port
        if client.destination_address is not None
        else socket_info.local_port,
    )


def _address(get: Callable[[], object]) -> object:
    try:
        return get()
    except OSError:
        return ""


def _port(address: object) -> int | None:
    """The port of a socket address tuple; None for a unix path."""
    if isinstance(address, tuple) and len(address) >= 2 and isinstance(address[1], int):
        return address[1]
    return None


NAME_LOOKUP_TIMEOUT = 5.0


async def client_host_name(address: str) -> str:
    """The client's host name for XCLIENT NAME=, forward-confirmed as Postfix does it: the
    PTR name counts only if it resolves back to the address, or anyone controlling their
    reverse DNS could claim any name. Else Postfix's "[UNAVAILABLE]" / "[TEMPUNAVAIL]"."""
    if not address:
        return "[UNAVAILABLE]"
    with trio.move_on_after(NAME_LOOKUP_TIMEOUT):
        try:
            name, _port = await trio.socket.getnameinfo((address, 0), socket.NI_NAMEREQD)
            infos = await trio.socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            return "[TEMPUNAVAIL]" if exc.errno == socket.EAI_AGAIN else "[UNAVAILABLE]"
        except OSError:
            return "[TEMPUNAVAIL]"
        confirmed = any(info[4][0] == address for info in infos)
        return name if confirmed else "[UNAVAILABLE]"
    return "[TEMPUNAVAIL]"
