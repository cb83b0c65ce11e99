"""The `Server`: the accept loops, one `Connection` per client, reload and graceful drain.

`serve` runs the accept loops and one `Connection` per client in a single nursery, so
stopping it stops everything.  The sockets come bound (listeners.py); who is admitted is
decided by admission.py; a connection behind a balancer reads its PROXY header first
(proxy_accept.py).

The server knows no signals: signals.py calls `stop` and `reload` (a server in a test
leaves the signal handlers alone).  The accept loop is accepting.py's.

`stop` (SIGTERM/SIGINT, fixing B14): not ready at once; stop accepting at once or after
DrainDelay seconds (draining.py); idle sessions get `421 4.3.2 Service shutting down`;
sessions in the middle of a message get ShutdownTimeout seconds to finish with their real
reply, then are cancelled (filters killed, 421, nothing half-delivered).  A second `stop`
ends the delay and the grace period at once.

`reload` (SIGHUP) re-reads the config file for new connections; running sessions finish on
the config they started with; a changed Listen is logged as needing a restart and not
applied (`applicable_reload`).

With `Workers: N` (workers.py) N processes each run `serve` on the same sockets as worker
k = 0..N-1: each serves at most its share of MaxConnections (admission.worker_share) and
leaves the Unix socket file to the supervisor, which outlives every worker.  A worker
holding its share leaves new clients to the others (handoff.py).

Connection ids come from `log.process_connection_ids` (start time, pid, counter): unique
across restarts, worker processes and the servers of one process.

Metrics (common/metrics.py): the server counts connections accepted, refused and active,
and hands its `Metrics` to every `Connection`; with metrics sockets it also serves
/metrics, /healthz and /readyz (metrics_http.py, readiness.py: not ready once draining).
Hostile clients (docs/behaviour.md, "Limits"): the per-client limit and the stress level
are admission.py's decisions; the server sends the refusals.
"""

from __future__ import annotations

import functools
import logging
import socket
import ssl
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import trio

from trio_proxsmtp.common.log import LOGGER_NAME, process_connection_ids
from trio_proxsmtp.common.metrics import NULL_METRICS, Metrics
from trio_proxsmtp.config.model import Config
from trio_proxsmtp.config.settings import relay_settings
from trio_proxsmtp.daemon import announce, listeners, notify
from trio_proxsmtp.daemon.accepting import accept_loop
from trio_proxsmtp.daemon.admission import (
    Admission,
    Limits,
    Refusal,
    counted_client,
    stress_change,
)
from trio_proxsmtp.daemon.draining import Drain
from trio_proxsmtp.daemon.handoff import leave_to_other_workers
from trio_proxsmtp.daemon.metrics_http import serve_metrics
from trio_proxsmtp.daemon.proxy_accept import AwaitingHeader, read_client
from trio_proxsmtp.daemon.readiness import Readiness
from trio_proxsmtp.daemon.refusals import refuse_busy, refuse_client
from trio_proxsmtp.daemon.reload import applicable_reload
from trio_proxsmtp.daemon.siblings import outlive_siblings
from trio_proxsmtp.relay.client_info import ClientInfo, from_socket_stream
from trio_proxsmtp.relay.connection import Connection
from trio_proxsmtp.relay.deadlines import Stress
from trio_proxsmtp.relay.settings import RelaySettings

__all__ = ["Server", "serve"]

log = logging.getLogger(LOGGER_NAME)


@attrs.define
class Server:
    """The accept loops, the live connections and the current config."""

    config: Config
    load_config: Callable[[], Config] | None = None  # re-reads the config file
    worker: int = 0  # this process's index, 0..workers-1 (Workers: N)
    workers: int = 1
    metrics: Metrics = NULL_METRICS
    connections: set[Connection | AwaitingHeader] = attrs.field(factory=set)
    ids: Iterator[str] = attrs.field(factory=process_connection_ids)
    _stopping: Drain = attrs.field(factory=Drain)
    _room: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot)
    admission: Admission = attrs.field(factory=Admission)
    stress: Stress = attrs.field(factory=Stress)

    _derived: tuple[Config, Limits, RelaySettings] | None = attrs.field(default=None, init=False)

    def _for_config(self) -> tuple[Limits, RelaySettings]:
        """This worker's limits and the relay's settings, once per config, not per client."""
        if self._derived is None or self._derived[0] is not self.config:
            config = self.config
            limits = Limits.of(config, self.worker, self.workers, self.admission.counts.shared)
            self._derived = (config, limits, relay_settings(config))
        return self._derived[1], self._derived[2]

    @property
    def draining(self) -> bool:
        """A stop came (SIGTERM): /readyz says not ready, even while still accepting."""
        return self._stopping.draining

    @property
    def limits(self) -> Limits:
        """This worker's share of the current config's limits."""
        return self._for_config()[0]

    @property
    def max_connections(self) -> int:
        """This worker's share of MaxConnections (all of it with one worker)."""
        return self.limits.max_connections

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
                # /readyz: this process's drain, the next server, the milters (readiness.py).
                health = Readiness(lambda: self.config, lambda: self.draining)
                await nursery.start(
                    functools.partial(serve_metrics, health=health),
                    metrics_sockets,
                    self.metrics.exposition,
                )
                await self.serve(sockets, task_status=task_status)
                if self.workers > 1:  # probes answered while any worker drains (siblings.py)
                    timeout = self.config.shutdown_timeout + 1
                    await outlive_siblings(timeout, self._stopping.cut_short)
                nursery.cancel_scope.cancel()
            return
        listeners.raise_fd_limit(self.max_connections)
        if self.workers == 1:  # (with Workers the supervisor says it: announce.py)
            announce.filtering_note(self.config)
        # With several workers the supervisor removes the socket file once all are gone.
        unix_paths = listeners.unix_socket_files(sockets) if self.workers == 1 else {}
        try:
            await self._serve(sockets, task_status)
        finally:
            listeners.remove_unix_socket_files(unix_paths)

    async def _serve(
        self, sockets: list[socket.socket], task_status: trio.TaskStatus[list[Any]]
    ) -> None:
        socket_listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(s)) for s in sockets]
        tls = [listeners.is_tls_listener(s) for s in sockets]
        async with trio.open_nursery() as connections:
            with self._stopping.accepting:
                async with trio.open_nursery() as accepting:
                    for listener, implicit_tls in zip(socket_listeners, tls, strict=True):
                        accepting.start_soon(self._accept_loop, listener, connections, implicit_tls)
                    names = [
                        listeners.listener_name(listener) + (" (TLS)" if implicit_tls else "")
                        for listener, implicit_tls in zip(socket_listeners, tls, strict=True)
                    ]
                    if self.workers == 1:
                        announce.listening(names)
                    else:
                        announce.worker_serving(self.worker, self.workers, names)
                    notify.ready(f"listening on {', '.join(names)}")
                    task_status.started(names)
            # Accepting has stopped (stop()): refuse new clients at once, drain. The
            # listening sockets are shared with the other workers (Workers: N), so closing
            # our descriptor alone would leave them open until the last worker closes its
            # own: shut them down for every process first.
            for listener in socket_listeners:
                listeners.shut_down_listener(listener.socket)
                await listener.aclose()
            log.info("draining: listeners closed, no new connections")
            await self._drain()
        log.info("shut down")

    def stop(self) -> None:
        """Begin a graceful shutdown (what SIGTERM does); a second call ends the grace."""
        self._stopping.stop(self.config.drain_delay)

    async def _drain(self) -> None:
        log.info("shutting down: %d sessions open", len(self.connections))
        notify.stopping()
        for connection in list(self.connections):
            connection.drain()
        await self._stopping.wait_for_sessions(self.connections, self.config.shutdown_timeout)
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
        listeners.raise_fd_limit(self.max_connections)
        log.info("SIGHUP: reloaded %s", config.path)
        return True

    # -- accepting ----------------------------------------------------------------------

    async def _accept_loop(
        self, listener: trio.SocketListener, connections: trio.Nursery, implicit_tls: bool = False
    ) -> None:
        """accepting.py's loop, each client dispatched into `connections`."""
        await accept_loop(
            listener,
            lambda stream: self._dispatch(stream, connections, implicit_tls),
            self._leave_to_other_workers if self.workers > 1 else None,
        )

    def _dispatch(
        self, stream: trio.SocketStream, connections: trio.Nursery, implicit_tls: bool
    ) -> None:
        """Start the task of an accepted client: refused, its PROXY header, or its session."""
        config = self.config
        conn_id = next(self.ids)
        limits = self.limits
        self.metrics.connection_accepted()
        if self.admission.at_accept(len(self.connections), limits) is Refusal.BUSY:
            self.metrics.connection_refused("busy")
            connections.start_soon(refuse_busy, stream, conn_id, limits.max_connections)
            return
        # ListenTLS: the handshake is the connection's first step (under TimeOut).
        context = config.tls_context if implicit_tls else None
        if config.proxy_protocol:
            # Who the client is comes in its PROXY header: read in its own task.
            waiting = AwaitingHeader(stream, conn_id, context)
            self.connections.add(waiting)
            connections.start_soon(self._run_proxied, waiting, config)
            return
        # Who the client is, decided once here.
        info = from_socket_stream(stream)
        counted = counted_client(config, info.client)
        if self.admission.admit(counted, limits) is Refusal.CLIENT_LIMIT:
            assert counted is not None
            connections.start_soon(refuse_client, stream, conn_id, counted, limits.per_client)
            return
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
        """The session of an accepted client, counted in MaxConnections and in the stress
        level (`counted`: its address, counted by `admission.admit`, or None);
        `_run_connection(connection, counted)` uncounts it."""
        connection = Connection(
            self._for_config()[1] if config is self.config else relay_settings(config),
            stream,
            info,
            conn_id,
            implicit_tls=implicit_tls,
            metrics=self.metrics,
            stress=self.stress,
        )
        self.connections.add(connection)  # admission.admit counted it already
        self._check_stress()
        return connection

    async def _leave_to_other_workers(
        self, listener: trio.SocketListener, overflowing: bool
    ) -> bool:
        """handoff.py: True when a waiting client is to be taken and refused as busy."""
        return await leave_to_other_workers(
            listener.socket,
            lambda: len(self.connections) >= self.max_connections,
            self._room,
            overflowing,
        )

    # -- running and ending -------------------------------------------------------------

    def _connection_ended(self) -> None:
        self._stopping.connection_ended()
        self._room.unpark_all()

    def _check_stress(self) -> None:
        """Stress on from STRESS_FRACTION of this worker's MaxConnections, off below it."""
        limits = self.limits
        stressed = stress_change(len(self.connections), limits, self.stress.on)
        if stressed is None:
            return
        self.stress.switch(stressed, self.metrics)
        if stressed:
            log.warning(
                "stress: %d of %d connections open; client waits limited to %g s (StressTimeOut)",
                len(self.connections),
                limits.max_connections,
                limits.stress_timeout,
            )
        else:
            log.info("stress over: %d connections open", len(self.connections))

    async def _run_connection(self, connection: Connection, counted: str | None = None) -> None:
        try:
            with self.metrics.session():
                await connection.run()
        finally:
            self.connections.discard(connection)
            self.admission.release(counted)
            self._check_stress()
            self._connection_ended()

    async def _run_proxied(self, waiting: AwaitingHeader, config: Config) -> None:
        """Read the PROXY header (proxy_accept.py), then run the session as the client it
        names; meanwhile `waiting` stands in `self.connections`."""
        try:
            client = await read_client(waiting, config, self.metrics)
        finally:
            self.connections.discard(waiting)
        if client is None:  # refused, or closed by the shutdown
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(waiting.stream)
            self._connection_ended()
            return
        # MaxConnectionsPerClient counts the client the header names, not the balancer.
        counted = counted_client(config, client.info.client)
        limits = self.limits
        if self.admission.admit(counted, limits) is Refusal.CLIENT_LIMIT:
            assert counted is not None
            await refuse_client(waiting.stream, waiting.conn_id, counted, limits.per_client)
            self._connection_ended()
            return
        connection = self._admit(
            config, client.stream, client.info, waiting.conn_id, waiting.implicit_tls, counted
        )
        # What followed the header is the start of the SMTP stream.
        connection.client.reader.feed(client.remainder)
        if self._stopping.sessions_draining:
            connection.drain()
        await self._run_connection(connection, counted)


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
    prometheus.bind_metrics_listener) /metrics is served on them from `metrics`.
    """
    if not 0 <= worker < workers:
        raise ValueError(f"worker {worker} is not in 0..{workers - 1}")
    server = Server(config, reload, worker, workers, metrics)
    await server.serve(sockets, metrics_sockets=metrics_sockets, task_status=task_status)
