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
Unix socket file to the supervisor, which outlives every worker.  A worker holding its share
stops accepting, so that the kernel hands new clients to the workers with room; only a
client still waiting after HANDOFF_DELAY (every worker full, or the others stalled) is
taken and refused as busy, and then every client waiting with it, at once.

Connection ids come from `log.connection_ids` (start time, pid, counter): unique across
restarts and worker processes. Every server in one process shares that process's counter
(`process_connection_ids`), so in-process servers (tests) never repeat an id either.

`ProxyProtocol: on` (proxy_protocol.py): each accepted connection reads its PROXY header in
its own task, never in the accept loop, within DEFAULT_HEADER_TIMEOUT; a missing, invalid,
late or untrusted header closes the connection with a log line.  The connection counts
toward MaxConnections from accept (the limit counts connections, not addresses: a header
changes nothing there).  `client_info.from_proxy_header` turns the header into the
`ClientInfo`.

Metrics (metrics.py): the server counts connections accepted, refused and active, and
hands its `Metrics` to every `Connection`; with metrics sockets it also serves /metrics.

Hostile clients (docs/behaviour.md, "Limits"): one client address may hold at most
`Config.per_client_limit` connections (MaxConnectionsPerClient; with Workers, each worker
applies its share, at least one: `worker_client_share`), except the
ConnectionLimitExceptions networks; past it the client gets `421 4.7.0`.  From
STRESS_FRACTION of MaxConnections on, the server is under stress: every connection's
client waits use StressTimeOut (deadlines.py); the log says when it switches.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import os
import resource
import select
import socket
import ssl
import stat
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import trio

from trio_proxsmtp.common.address import Address, AddressKind, format_host, resolve_tcp
from trio_proxsmtp.common.log import LOGGER_NAME, connection_ids, connection_logger
from trio_proxsmtp.common.metrics import NULL_METRICS, Metrics
from trio_proxsmtp.config.model import STRESS_FRACTION, Config
from trio_proxsmtp.config.settings import relay_settings
from trio_proxsmtp.daemon import notify
from trio_proxsmtp.daemon.prometheus import serve_metrics
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
from trio_proxsmtp.relay.connection import Connection
from trio_proxsmtp.relay.deadlines import Stress
from trio_proxsmtp.relay.settings import TransparentMode
from trio_proxsmtp.relay.upstream import IP_TRANSPARENT

__all__ = [
    "Server",
    "applicable_reload",
    "bind_listeners",
    "is_tls_listener",
    "process_connection_ids",
    "serve",
    "worker_client_share",
    "worker_share",
]

log = logging.getLogger(LOGGER_NAME)

BACKLOG = socket.SOMAXCONN  # the kernel caps it at net.core.somaxconn
BUSY_REPLY = b"421 Server busy, too many connections\r\n"
# Workers: N: how long a worker holding its share of MaxConnections leaves a waiting client
# to the other workers before it takes it to refuse it as busy.
HANDOFF_DELAY = 1.0
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


def worker_client_share(limit: int, worker: int, workers: int) -> int:
    """Worker `worker`'s part of MaxConnectionsPerClient `limit` (0: no limit).

    Workers share no state, so each applies its part to the connections it holds. A part
    is at least one: a part of 0 would refuse the address on that worker outright however
    few connections it holds elsewhere. So one address holds at most
    max(limit, workers) connections over all workers."""
    if not limit:
        return 0
    return max(1, worker_share(limit, worker, workers))


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
    if new.metrics_listen != running.metrics_listen:
        problems.append(
            f"MetricsListen changed from {running.metrics_listen or 'unset'} to "
            f"{new.metrics_listen or 'unset'}: a restart is needed to apply it"
        )
        new = attrs.evolve(new, metrics_listen=running.metrics_listen)
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
    metrics: Metrics = NULL_METRICS
    connections: set[Connection | _AwaitingHeader] = attrs.field(factory=set)
    ids: Iterator[str] = attrs.field(factory=process_connection_ids)
    draining: bool = False
    _idle: trio.Event = attrs.field(factory=trio.Event)
    _accepting: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    _grace: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    _room: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot)
    # Open connections per client address counted by MaxConnectionsPerClient.
    per_client: collections.Counter[str] = attrs.field(factory=collections.Counter)
    stress: Stress = attrs.field(factory=Stress)

    @property
    def max_connections(self) -> int:
        """This worker's share of MaxConnections (all of it with one worker)."""
        return worker_share(self.config.max_connections, self.worker, self.workers)

    async def serve(
        self,
        sockets: list[socket.socket],
        *,
        metrics_sockets: list[socket.socket] | None = None,
        task_status: trio.TaskStatus[list[Any]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until stopped and drained; /metrics on `metrics_sockets` meanwhile."""
        if metrics_sockets:
            async with trio.open_nursery() as nursery:
                await nursery.start(serve_metrics, metrics_sockets, self.metrics.exposition)
                await self.serve(sockets, task_status=task_status)
                nursery.cancel_scope.cancel()
            return
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
            # Accepting has stopped (stop()): refuse new clients at once, drain. The
            # listening sockets are shared with the other workers (Workers: N), so closing
            # our descriptor alone would leave them open until the last worker closes its
            # own: shut them down for every process first.
            for listener in listeners:
                _shut_down_listener(listener.socket)
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
        overflowing = False
        while True:
            if self.workers > 1:
                overflowing = await self._leave_to_other_workers(listener, overflowing)
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno in _RESOURCE_ERRNOS:
                    log.error("accept failed: %s; retrying in 100 ms", exc)
                    await trio.sleep(0.1)
                    continue
                if exc.errno == errno.EINVAL:
                    # Another worker is shutting down and shut the shared listener down
                    # (no longer listening): our own SIGTERM is on its way; until then
                    # the sessions we have go on.
                    log.debug("listener %s shut down by another worker", listener.socket)
                    await trio.sleep_forever()
                raise
            config = self.config
            conn_id = next(self.ids)
            limit = self.max_connections
            self.metrics.connection_accepted()
            if len(self.connections) >= limit:
                self.metrics.connection_refused("busy")
                connections.start_soon(self._refuse_busy, stream, conn_id, limit)
                continue
            # ListenTLS: the handshake is the connection's first step (under TimeOut).
            context = config.tls_context if implicit_tls else None
            if config.proxy_protocol:
                # Who the client is comes in its PROXY header: read in its own task.
                waiting = _AwaitingHeader(stream, conn_id, context)
                self.connections.add(waiting)
                connections.start_soon(self._run_proxied, waiting, config)
                continue
            # Who the client is, decided once here.
            info = from_socket_stream(stream)
            counted = info.client if config.connection_limit_applies(info.client) else None
            if counted is not None and self._over_client_limit(counted):
                connections.start_soon(self._refuse_client, stream, conn_id, counted)
                continue
            connection = self._admit(config, stream, info, conn_id, context, counted)
            connections.start_soon(self._run_connection, connection, counted)

    def _admit(
        self,
        config: Config,
        stream: trio.abc.Stream,
        info: ClientInfo,
        conn_id: str,
        implicit_tls: ssl.SSLContext | None,
        counted: str | None,
    ) -> Connection:
        """The session of an accepted client, counted in MaxConnections, in
        MaxConnectionsPerClient (`counted`: its address, None when not counted) and in
        the stress level; `_run_connection(connection, counted)` uncounts it."""
        connection = Connection(
            relay_settings(config),
            stream,
            info,
            conn_id,
            implicit_tls=implicit_tls,
            metrics=self.metrics,
            stress=self.stress,
        )
        self.connections.add(connection)
        if counted is not None:
            self.per_client[counted] += 1
        self._check_stress()
        return connection

    async def _leave_to_other_workers(
        self, listener: trio.SocketListener, overflowing: bool
    ) -> bool:
        """Wait while this worker holds its share of MaxConnections and another worker may
        take the waiting clients: the kernel gives a connection only to a worker accepting.

        Returns when there is room, or when a client has waited HANDOFF_DELAY (to be refused
        as busy); `overflowing` (the value returned last time) then refuses every client
        still waiting at once, instead of one per HANDOFF_DELAY."""
        sock = listener.socket
        while len(self.connections) >= self.max_connections:
            if overflowing and _pending(sock):
                return True
            await trio.lowlevel.wait_readable(sock)  # a client is waiting
            if len(self.connections) < self.max_connections:
                break  # room came while we waited for it
            with trio.move_on_after(HANDOFF_DELAY):
                await self._room.park()
            if len(self.connections) >= self.max_connections and _pending(sock):
                return True
            overflowing = False
        return False

    def _connection_ended(self) -> None:
        self._idle.set()
        self._room.unpark_all()

    @property
    def per_client_limit(self) -> int:
        """This worker's share of MaxConnectionsPerClient (0: no limit)."""
        return worker_client_share(self.config.per_client_limit, self.worker, self.workers)

    def _over_client_limit(self, client: str) -> bool:
        limit = self.per_client_limit
        return bool(limit) and self.per_client[client] >= limit

    def _check_stress(self) -> None:
        """Stress on from STRESS_FRACTION of this worker's MaxConnections, off below it."""
        stressed = len(self.connections) >= max(1, int(self.max_connections * STRESS_FRACTION))
        if stressed == self.stress.on or not self.config.stress_timeout:
            return
        self.stress.switch(stressed)
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
            with self.metrics.session():
                await connection.run()
        finally:
            self.connections.discard(connection)
            if counted is not None:
                self.per_client[counted] -= 1
                if not self.per_client[counted]:
                    del self.per_client[counted]
            self._check_stress()
            self._connection_ended()

    async def _run_proxied(self, waiting: _AwaitingHeader, config: Config) -> None:
        """Read the PROXY header, then run the session as the client it names.

        Meanwhile `waiting` stands in `self.connections`: it counts toward MaxConnections,
        and a shutdown closes it at once (it has not said who it is yet)."""
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
            self.metrics.connection_refused(exc.reason)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.error("%s left before its PROXY header: %s", socket_info.client, exc)
            self.metrics.connection_refused("proxy-invalid")
        finally:
            self.connections.discard(waiting)
        if result is None:  # refused, or closed by the shutdown
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)
            self._connection_ended()
            return
        transparent = config.transparent_proxy is not TransparentMode.OFF
        info = from_proxy_header(result, socket_info, transparent=transparent)
        if result.is_health_check:
            log.debug("PROXY LOCAL from %s: a health check", socket_info.client)
        else:
            log.debug("PROXY header from %s: client %s", socket_info.client, info.client)
        # MaxConnectionsPerClient counts the client the header names, not the balancer.
        counted = info.client if config.connection_limit_applies(info.client) else None
        if counted is not None and self._over_client_limit(counted):
            await self._refuse_client(stream, waiting.conn_id, counted)
            self._connection_ended()
            return
        remainder = result.remainder
        client_stream: trio.abc.Stream = stream
        if waiting.implicit_tls is not None and remainder:
            # ListenTLS behind a balancer: what followed the header is the TLS handshake.
            client_stream, remainder = PrefixedStream(stream, remainder), b""
        connection = self._admit(
            config, client_stream, info, waiting.conn_id, waiting.implicit_tls, counted
        )
        # What followed the header is the start of the SMTP stream.
        connection.client.reader.feed(remainder)
        if self.draining:
            connection.drain()
        await self._run_connection(connection, counted)

    async def _refuse_client(self, stream: trio.SocketStream, conn_id: str, client: str) -> None:
        connection_logger(conn_id).warning(
            "too many connections from %s (max %d): refused", client, self.per_client_limit
        )
        await _refuse(stream, f"421 4.7.0 Error: too many connections from {client}\r\n".encode())

    async def _refuse_busy(self, stream: trio.SocketStream, conn_id: str, limit: int) -> None:
        connection_logger(conn_id).error(
            "too many connections open (max %d). sent busy response", limit
        )
        await _refuse(stream, BUSY_REPLY)


def _pending(sock: trio.socket.SocketType) -> bool:
    """Is a client waiting in this listening socket's queue (not yet taken by any worker)?"""
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    return bool(poller.poll(0))


async def _refuse(stream: trio.SocketStream, reply: bytes) -> None:
    """Best effort, bounded: the refused client may not be reading."""
    with trio.move_on_after(5):
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(reply)
    await trio.aclose_forcefully(stream)


class _AwaitingHeader:
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


def _shut_down_listener(sock: trio.socket.SocketType) -> None:
    """Stop `sock` listening in every process that shares it (Workers: N).

    On Linux ``shutdown(SHUT_RD)`` on a listening TCP socket leaves the LISTEN state: new
    clients are refused at once, and the other workers' pending ``accept`` fails with
    EINVAL (their accept loops wait for their own stop). A Unix socket refuses new
    clients once shut down for reading.
    """
    with contextlib.suppress(OSError):  # not connected / already closed: nothing to do
        sock.shutdown(socket.SHUT_RD)


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
    metrics: Metrics = NULL_METRICS,
    metrics_sockets: list[socket.socket] | None = None,
    task_status: trio.TaskStatus[list[Any]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `sockets` until cancelled; no signals (the command line's serve is
    signals.serve).

    `worker`/`workers`: this process is worker `worker` (0-based) of `workers` serving the
    same sockets (see the module docstring); the defaults mean the only one.  `metrics`
    records what happens (NULL_METRICS: nothing); with `metrics_sockets` (bound by
    metrics.bind_metrics_listener) /metrics is served on them from `metrics`.
    """
    if not 0 <= worker < workers:
        raise ValueError(f"worker {worker} is not in 0..{workers - 1}")
    server = Server(config, reload, worker, workers, metrics)
    await server.serve(sockets, metrics_sockets=metrics_sockets, task_status=task_status)
