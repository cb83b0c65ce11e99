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
k = 0..N-1: each serves at most its share of MaxConnections (`worker_share`), numbers its
connections FIRST_CONNECTION_ID + k, + k + N, ... so ids stay unique across processes, and
leaves the Unix socket file to the supervisor, which outlives every worker.

Hostile clients (docs/behaviour.md, "Limits"): one client address may hold at most
`Config.per_client_limit` connections (MaxConnectionsPerClient; its worker share with
Workers), except the ConnectionLimitExceptions networks; past it the client gets
`421 4.7.0`.  From STRESS_FRACTION of MaxConnections on, the server is under stress: every
connection's client waits use StressTimeOut (deadlines.py); the log says when it switches.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import itertools
import logging
import os
import resource
import socket
import stat
from collections.abc import Callable
from typing import Any

import attrs
import trio

from trio_proxsmtp import notify
from trio_proxsmtp.address import AddressKind, format_host, resolve_tcp
from trio_proxsmtp.client_info import from_socket_stream
from trio_proxsmtp.config import STRESS_FRACTION, Config, TransparentMode
from trio_proxsmtp.connection import Connection
from trio_proxsmtp.deadlines import Stress
from trio_proxsmtp.log import LOGGER_NAME, connection_logger
from trio_proxsmtp.upstream import IP_TRANSPARENT

__all__ = ["Server", "applicable_reload", "bind_listeners", "serve", "worker_share"]

log = logging.getLogger(LOGGER_NAME)

BACKLOG = socket.SOMAXCONN  # the kernel caps it at net.core.somaxconn
FIRST_CONNECTION_ID = 0x100000
BUSY_REPLY = b"421 Server busy, too many connections\r\n"
# fds one connection may need: client, upstream, 2 spools, 3 filter pipes, slack.
FDS_PER_CONNECTION = 8
# Accept errors that mean "out of resources": wait and retry instead of dying.
_RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


def bind_listeners(config: Config) -> list[socket.socket]:
    """Create, bind and listen on the Listen address (before detaching and dropping root)."""
    address = config.listen
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
    ids: Any = attrs.field()
    draining: bool = False
    _idle: trio.Event = attrs.field(factory=trio.Event)
    _accepting: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    _grace: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    # Open connections per client address counted by MaxConnectionsPerClient.
    per_client: collections.Counter[str] = attrs.field(factory=collections.Counter)
    stress: Stress = attrs.field(factory=Stress)

    @ids.default
    def _first_ids(self) -> Any:
        return itertools.count(FIRST_CONNECTION_ID + self.worker, self.workers)

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
        async with trio.open_nursery() as connections:
            with self._accepting:
                async with trio.open_nursery() as accepting:
                    for listener in listeners:
                        accepting.start_soon(self._accept_loop, listener, connections)
                    names = [_listener_name(listener) for listener in listeners]
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

    async def _accept_loop(self, listener: trio.SocketListener, connections: trio.Nursery) -> None:
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
            info = from_socket_stream(stream)
            counted = info.client if config.connection_limit_applies(info.client) else None
            if counted is not None and self._over_client_limit(counted):
                connections.start_soon(self._refuse_client, stream, conn_id, counted)
                continue
            connection = Connection(config, stream, info, conn_id, stress=self.stress)
            self.connections.add(connection)
            if counted is not None:
                self.per_client[counted] += 1
            self._check_stress()
            connections.start_soon(self._run_connection, connection, counted)

    @property
    def per_client_limit(self) -> int:
        """This worker's share of MaxConnectionsPerClient (0: no limit)."""
        limit = self.config.per_client_limit
        if not limit:
            return 0
        return max(1, worker_share(limit, self.worker, self.workers))

    def _over_client_limit(self, client: str) -> bool:
        limit = self.per_client_limit
        return bool(limit) and self.per_client[client] >= limit

    def _check_stress(self) -> None:
        """Stress on from STRESS_FRACTION of this worker's MaxConnections, off below it."""
        stressed = len(self.connections) >= max(1, int(self.max_connections * STRESS_FRACTION))
        if stressed == self.stress.on or not self.config.stress_timeout:
            return
        self.stress.on = stressed
        if stressed:
            log.warning(
                "stress: %d of %d connections open; client waits limited to %g s (StressTimeOut)",
                len(self.connections),
                self.max_connections,
                self.config.stress_timeout,
            )
        else:
            log.info("stress over: %d connections open", len(self.connections))

    async def _run_connection(self, connection: Connection, counted: str | None = None) -> None:
        try:
            await connection.run()
        finally:
            self.connections.discard(connection)
            if counted is not None:
                self.per_client[counted] -= 1
                if not self.per_client[counted]:
                    del self.per_client[counted]
            self._check_stress()
            self._idle.set()

    async def _refuse_client(self, stream: trio.SocketStream, conn_id: int, client: str) -> None:
        connection_logger(conn_id).warning(
            "too many connections from %s (max %d): refused", client, self.per_client_limit
        )
        reply = f"421 4.7.0 Error: too many connections from {client}\r\n".encode()
        with trio.move_on_after(5):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_all(reply)
        await stream.aclose()

    async def _refuse(self, stream: trio.SocketStream, conn_id: int, limit: int) -> None:
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
