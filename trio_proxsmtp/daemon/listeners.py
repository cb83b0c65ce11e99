"""The listening sockets: binding Listen, ListenTLS and MetricsListen, the Unix socket
files, and the open-files limit that MaxConnections needs.

`bind_listeners` is synchronous so that the command line can bind before it detaches and
report a bind error to the invoking shell (B17).  `bind_tcp` is the one TCP bind loop
(every address a name resolves to), for Listen, ListenTLS and MetricsListen alike.

A Unix Listen socket file left by an earlier run is removed before the bind; ours is
removed at exit (1.10 left it), unless another process has replaced it.  With Workers the
supervisor, which outlives every worker, removes it.

ListenTLS sockets are remembered (`is_tls_listener`): their clients speak TLS from the
first byte (RFC 8314), whatever the address (port 0 in tests).
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import socket
import stat
import weakref

import trio

from trio_proxsmtp.common.address import (
    IP_TRANSPARENT,
    Address,
    AddressKind,
    format_host,
    resolve_tcp,
)
from trio_proxsmtp.common.log import LOGGER_NAME
from trio_proxsmtp.config.model import Config
from trio_proxsmtp.relay.settings import TransparentMode

__all__ = [
    "BACKLOG",
    "FDS_PER_CONNECTION",
    "bind_listeners",
    "bind_tcp",
    "is_tls_listener",
    "listener_name",
    "raise_fd_limit",
    "remove_unix_socket_files",
    "shut_down_listener",
    "socket_name",
    "unix_socket_files",
]

log = logging.getLogger(LOGGER_NAME)

BACKLOG = socket.SOMAXCONN  # the kernel caps it at net.core.somaxconn
# fds one connection may need: client, upstream, 2 spools, 3 filter pipes, slack.
FDS_PER_CONNECTION = 8

# The ListenTLS sockets bound by this process (inherited by forked Workers).
_TLS_SOCKETS: weakref.WeakSet[socket.socket] = weakref.WeakSet()


def is_tls_listener(sock: socket.socket) -> bool:
    """Whether `sock` was bound for ListenTLS by `bind_listeners`."""
    return sock in _TLS_SOCKETS


def bind_listeners(config: Config) -> list[socket.socket]:
    """Create, bind and listen on the Listen address, and on the ListenTLS address when
    set (before detaching and dropping root)."""
    sockets = _bind(config, config.listen)
    if config.listen_tls is not None:
        try:
            tls = _bind(config, config.listen_tls)
        except OSError:
            for sock in sockets:
                sock.close()
            raise
        _TLS_SOCKETS.update(tls)
        sockets += tls
    return sockets


def bind_tcp(
    address: Address, *, backlog: int = BACKLOG, transparent: bool = False
) -> list[socket.socket]:
    """Bind and listen on every address the TCP `address` resolves to (IPv6 sockets take
    IPv6 only); `transparent` sets IP_TRANSPARENT (TransparentProxy: full).  On any error
    the sockets made so far are closed and the error goes on unchanged."""
    sockets: list[socket.socket] = []
    try:
        for family, sockaddr in resolve_tcp(address):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if transparent:
                level = socket.IPPROTO_IPV6 if family == socket.AF_INET6 else socket.SOL_IP
                sock.setsockopt(level, IP_TRANSPARENT, 1)
            sock.bind(sockaddr)
            sock.listen(backlog)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _bind(config: Config, address: Address) -> list[socket.socket]:
    """Listen or ListenTLS; an OSError's `filename` names the address (its `strerror` is
    the system's alone, so that a message naming the address names it once)."""
    try:
        if address.kind is AddressKind.UNIX:
            return [_bind_unix(address)]
        transparent = config.transparent_proxy is TransparentMode.FULL
        return bind_tcp(address, transparent=transparent)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror or str(exc), str(address)) from exc


def _bind_unix(address: Address) -> socket.socket:
    assert address.path is not None
    _remove_stale_socket(address.path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(address.path)
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


def _remove_stale_socket(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)


def unix_socket_files(sockets: list[socket.socket]) -> dict[str, tuple[int, int]]:
    """The socket files we bound, by path, with their (device, inode)."""
    files = {}
    for sock in sockets:
        if sock.family == socket.AF_UNIX:
            path = sock.getsockname()
            if isinstance(path, str) and path:
                with contextlib.suppress(OSError):
                    st = os.lstat(path)
                    files[path] = (st.st_dev, st.st_ino)
    return files


def remove_unix_socket_files(files: dict[str, tuple[int, int]]) -> None:
    """Remove our Listen socket files at exit, unless another process has replaced them."""
    for path, identity in files.items():
        try:
            st = os.lstat(path)
            if (st.st_dev, st.st_ino) == identity:
                os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("couldn't remove socket file: %s: %s", path, exc.strerror)


def raise_fd_limit(max_connections: int) -> None:
    """Raise the soft RLIMIT_NOFILE so that MaxConnections sessions fit (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max_connections * FDS_PER_CONNECTION + 64
    if hard != resource.RLIM_INFINITY:
        want = min(want, hard)
    if want > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError) as exc:
            log.warning("couldn't raise the open files limit to %d: %s", want, exc)
    if want < max_connections * FDS_PER_CONNECTION:
        log.warning(
            "open files limit %d may be too low for MaxConnections %d", want, max_connections
        )


def shut_down_listener(sock: trio.socket.SocketType) -> None:
    """Stop `sock` listening in every process that shares it (Workers: N).

    On Linux ``shutdown(SHUT_RD)`` on a listening TCP socket leaves the LISTEN state: new
    clients are refused at once, and the other workers' pending ``accept`` fails with
    EINVAL (their accept loops wait for their own stop). A Unix socket refuses new
    clients once shut down for reading.
    """
    with contextlib.suppress(OSError):  # not connected / already closed: nothing to do
        sock.shutdown(socket.SHUT_RD)


def listener_name(listener: trio.SocketListener) -> str:
    """The listener's address for the log: host:port, [v6]:port or the socket path."""
    return socket_name(listener.socket.getsockname())


def socket_name(sockname: object) -> str:
    """A bound socket's getsockname() as listener_name shows it."""
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        host = format_host(sockname)
        return f"[{host}]:{sockname[1]}" if ":" in host else f"{host}:{sockname[1]}"
    return format_host(sockname)
