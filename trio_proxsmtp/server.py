"""Listeners, the connection limit, reload and graceful drain.

`bind_listeners` is synchronous so that the command line can bind before it detaches and
report a bind error to the invoking shell (B17).  `serve` runs the accept loops and one
`Connection` per client in a single nursery, so stopping it stops everything.

The server knows no signals: the command line's signal task (signals.py) calls `stop` and
`reload`, and a server started in a test (testing.run_proxy) leaves the process's signal
handlers alone.

`stop` (SIGTERM/SIGINT, fixing B14): stop accepting at once; idle sessions get
`421 4.3.2 Service shutting down`; sessions in the middle of a message get ShutdownTimeout
seconds to finish with their real reply, then are cancelled (filters killed, 421, nothing
half-delivered).  A second `stop` ends the grace period at once.

`reload` (SIGHUP) re-reads the config file for new connections; running sessions finish on
the config they started with; a changed Listen is logged as needing a restart and not
applied.
A Unix Listen socket file is removed at exit (1.10 left it), unless it was replaced.

With `Workers: N` (workers.py) N processes each run `serve` on the same sockets as worker
k = 0..N-1: each serves at most its share of MaxConnections (`worker_share`) and leaves the
Unix socket file to the supervisor, which outlives every worker.

Connection ids come from `log.connection_ids` (start time, pid, counter): unique across
restarts and worker processes. Every server in one process shares that process's counter
(`process_connection_ids`), so in-process servers (tests) never repeat an id either.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import resource
import socket
import stat
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import trio

from trio_proxsmtp import notify
from trio_proxsmtp.address import Address, AddressKind, format_host, resolve_tcp
from trio_proxsmtp.client_info import from_socket_stream
from trio_proxsmtp.config import Config, TransparentMode
from trio_proxsmtp.connection import Connection
from trio_proxsmtp.log import LOGGER_NAME, connection_ids, connection_logger
from trio_proxsmtp.upstream import IP_TRANSPARENT

__all__ = [
    "Server",
    "applicable_reload",
    "bind_listeners",
    "is_tls_listener",
    "process_connection_ids",
    "serve",
    "worker_share",
]

log = logging.getLogger(LOGGER_NAME)

BACKLOG = socket.SOMAXCONN  # the kernel caps it at net.core.somaxconn
BUSY_REPLY = b"421 Server busy, too many connections\r\n"
# fds one connection may need: client, upstream, 2 spools, 3 filter pipes, slack.
FDS_PER_CONNECTION = 8
# Accept errors that mean "out of resources": wait and retry instead of dying.
_RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


# The ListenTLS sockets bound by this process (inherited by forked Workers): their clients
# speak TLS from the first byte (RFC 8314), whatever the address (port 0 in tests).
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


def _bind(config: Config, address: Address) -> list[socket.socket]:
    sockets: list[socket.socket] = []
    try:
        if address.kind is AddressKind.UNIX:
            assert address.path is not None
            _remove_stale_socket(address.path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind(address.path)
            sock.listen(BACKLOG)
            return sockets
        for family, sockaddr in resolve_tcp(address):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if config.transparent_proxy is TransparentMode.FULL:
                level = socket.IPPROTO_IPV6 if family == socket.AF_INET6 else socket.SOL_IP
                sock.setsockopt(level, IP_TRANSPARENT, 1)
            sock.bind(sockaddr)
            sock.listen(BACKLOG)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise OSError(exc.errno, f"{address}: {exc.strerror or exc}") from exc
    return sockets


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


_ids: tuple[int, Iterator[str]] | None = None  # (pid, this process's connection ids)


def process_connection_ids() -> Iterator[str]:
    """This process's connection ids, made on first use: a forked worker (another pid)
    starts its own, with its own pid in them."""
    global _ids
    pid = os.getpid()
    if _ids is None or _ids[0] != pid:
        _ids = (pid, connection_ids(pid=pid))
    return _ids[1]


def worker_share(max_connections: int, worker: int, workers: int) -> int:
    """Worker `worker` (0-based) of `workers`' part of MaxConnections; the parts add up."""
    return max_connections // workers + (1 if worker < max_connections % workers else 0)


def applicable_reload(
    running: Config, new: Config, workers: int
) -> tuple[Config | None, list[str]]:
    """What of a reloaded config a running server can apply: Listen and Workers need a
    restart, so they keep their running values. None when it cannot be applied at all.
    The reasons come back as text for the log. Used by every worker and the supervisor."""
    problems: list[str] = []
    if new.listen != running.listen:
        problems.append(
            f"Listen changed from {running.listen} to {new.listen}: a restart is needed to apply it"
        )
        new = attrs.evolve(new, listen=running.listen)
    if new.listen_tls != running.listen_tls:
        problems.append(
            f"ListenTLS changed from {running.listen_tls} to {new.listen_tls}: "
            "a restart is needed to apply it"
        )
        new = attrs.evolve(new, listen_tls=running.listen_tls)
    if running.listen_tls is not None and new.tls_context is None:
        problems.append("ListenTLS needs TLSCertificate and TLSKey")
        return None, problems
    if new.workers != workers:
        problems.append(
            f"Workers changed from {workers} to {new.workers}: a restart is needed to apply it"
        )
        new = attrs.evolve(new, workers=workers)
    if new.max_connections < workers:
        problems.append(
            f"MaxConnections {new.max_connections} is less than the {workers} workers running"
        )
        return None, problems
    return new, problems


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


@attrs.define
class Server:
    """The accept loops, the live connections and the current config."""

    config: Config
    load_config: Callable[[], Config] | None = None  # re-reads the config file
    worker: int = 0  # this process's index, 0..workers-1 (Workers: N)
    workers: int = 1
    connections: set[Connection] = attrs.field(factory=set)
    ids: Iterator[str] = attrs.field(factory=process_connection_ids)
    draining: bool = False
    _idle: trio.Event = attrs.field(factory=trio.Event)
    _accepting: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    _grace: trio.CancelScope = attrs.field(factory=trio.CancelScope)

    @property
    def max_connections(self) -> int:
        """This worker's share of MaxConnections (all of it with one worker)."""
        return worker_share(self.config.max_connections, self.worker, self.workers)

    async def serve(
        self,
        sockets: list[socket.socket],
        *,
        task_status: trio.TaskStatus[list[Any]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        raise_fd_limit(self.max_connections)
        if not self.config.filter_command:
            log.warning("no filter command specified. passing messages through")
        # With several workers the supervisor removes the socket file once all are gone.
        unix_paths = unix_socket_files(sockets) if self.workers == 1 else {}
        try:
            await self._serve(sockets, task_status)
        finally:
            remove_unix_socket_files(unix_paths)

    async def _serve(
        self, sockets: list[socket.socket], task_status: trio.TaskStatus[list[Any]]
    ) -> None:
        listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(s)) for s in sockets]
        tls = [is_tls_listener(s) for s in sockets]
        async with trio.open_nursery() as connections:
            with self._accepting:
                async with trio.open_nursery() as accepting:
                    for listener, implicit_tls in zip(listeners, tls, strict=True):
                        accepting.start_soon(self._accept_loop, listener, connections, implicit_tls)
                    names = [
                        _listener_name(listener) + (" (TLS)" if implicit_tls else "")
                        for listener, implicit_tls in zip(listeners, tls, strict=True)
                    ]
                    log.info("listening on %s", ", ".join(names))
                    notify.ready(f"listening on {', '.join(names)}")
                    task_status.started(names)
            # Accepting has stopped (stop()): refuse new clients at once, drain.
            for listener in listeners:
                await listener.aclose()
            await self._drain()
        log.info("shut down")

    def stop(self) -> None:
        """Begin a graceful shutdown (what SIGTERM does); a second call ends the grace."""
        if not self.draining:
            self.draining = True
            self._accepting.cancel()
        else:
            self._grace.cancel()

    async def _drain(self) -> None:
        self.draining = True
        log.info("shutting down: %d sessions open", len(self.connections))
        notify.stopping()
        for connection in list(self.connections):
            connection.drain()
        with self._grace:
            self._grace.deadline = trio.current_time() + self.config.shutdown_timeout
            while self.connections:
                self._idle = trio.Event()
                await self._idle.wait()
        if self.connections:
            log.warning(
                "shutdown grace period over: cutting %d sessions short", len(self.connections)
            )
        for connection in list(self.connections):
            connection.cancel()

    async def reload(self) -> bool:
        """Re-read the config file (what SIGHUP does); False when the old config stays."""
        if self.load_config is None:
            log.warning("SIGHUP: no config file to reload")
            return False
        try:
            # In a thread: reading the file resolves host names, which may take seconds
            # of DNS that must not stall every session.
            loaded = await trio.to_thread.run_sync(self.load_config)
        except Exception as exc:
            log.error("SIGHUP: config not reloaded, keeping the old one: %s", exc)
            return False
        config, problems = applicable_reload(self.config, loaded, self.workers)
        for problem in problems:
            log.warning("SIGHUP: %s", problem)
        if config is None:
            log.error("SIGHUP: config not reloaded, keeping the old one")
            return False
        self.config = config
        raise_fd_limit(self.max_connections)
        log.info("SIGHUP: reloaded %s", config.path)
        return True

    async def _accept_loop(
        self, listener: trio.SocketListener, connections: trio.Nursery, implicit_tls: bool = False
    ) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno in _RESOURCE_ERRNOS:
                    log.error("accept failed: %s; retrying in 100 ms", exc)
                    await trio.sleep(0.1)
                    continue
                raise
            config = self.config
            conn_id = next(self.ids)
            limit = self.max_connections
            if len(self.connections) >= limit:
                connections.start_soon(self._refuse, stream, conn_id, limit)
                continue
            # Who the client is, decided once here (a PROXY header would fill it instead).
            # ListenTLS: the handshake is the connection's first step (under TimeOut).
            context = config.tls_context if implicit_tls else None
            connection = Connection(
                config, stream, from_socket_stream(stream), conn_id, implicit_tls=context
            )
            self.connections.add(connection)
            connections.start_soon(self._run_connection, connection)

    async def _run_connection(self, connection: Connection) -> None:
        try:
            await connection.run()
        finally:
            self.connections.discard(connection)
            self._idle.set()

    async def _refuse(self, stream: trio.SocketStream, conn_id: str, limit: int) -> None:
        connection_logger(conn_id).error(
            "too many connections open (max %d). sent busy response", limit
        )
        with trio.move_on_after(5):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_all(BUSY_REPLY)
        await stream.aclose()


def _listener_name(listener: trio.SocketListener) -> str:
    sockname = listener.socket.getsockname()
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        host = format_host(sockname)
        return f"[{host}]:{sockname[1]}" if ":" in host else f"{host}:{sockname[1]}"
    return format_host(sockname)


async def serve(
    config: Config,
    sockets: list[socket.socket],
    *,
    reload: Callable[[], Config] | None = None,
    worker: int = 0,
    workers: int = 1,
    task_status: trio.TaskStatus[list[Any]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `sockets` until cancelled; no signals (the command line's serve is
    signals.serve).

    `worker`/`workers`: this process is worker `worker` (0-based) of `workers` serving the
    same sockets (see the module docstring); the defaults mean the only one.
    """
    if not 0 <= worker < workers:
        raise ValueError(f"worker {worker} is not in 0..{workers - 1}")
    server = Server(config, reload, worker, workers)
    await server.serve(sockets, task_status=task_status)
