"""Signals for the command line: SIGTERM/SIGINT stop the server, SIGHUP reloads it.

Only the command line installs these (through `serve`); a server started in-process by a
test (testing.run_proxy) never touches the process's signal handlers.  The receiver stays
open through the drain: a second SIGTERM/SIGINT must end the grace period (and the
DrainDelay before it: draining.py), not kill the process with filters and spools left
behind (B14).

A worker of `Workers: N` also takes the supervisor's END_GRACE_SIGNAL (workers.py): the
supervisor's second stop signal, sent as another signal so that it cannot merge with the
first.  It means a stop and a second one, in whichever order the two arrive.
"""

from __future__ import annotations

import logging
import signal
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import trio

from trio_proxsmtp.common.log import LOGGER_NAME
from trio_proxsmtp.common.metrics import NULL_METRICS, Metrics
from trio_proxsmtp.config.model import Config
from trio_proxsmtp.daemon import notify
from trio_proxsmtp.daemon.admission import Admission
from trio_proxsmtp.daemon.server import Server
from trio_proxsmtp.daemon.workers import END_GRACE_SIGNAL
from trio_proxsmtp.stages import reaper

__all__ = ["HANDLED_SIGNALS", "handle_signals", "serve"]

log = logging.getLogger(LOGGER_NAME)

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


async def handle_signals(server: Server, received: AsyncIterator[int]) -> None:
    """Turn each signal into the server's `stop()` or `reload()`."""
    async for signum in received:
        if signum == signal.SIGHUP:
            if server.draining:
                log.info("SIGHUP ignored: shutting down")
            else:
                notify.reloading()
                reloaded = await server.reload()
                notify.ready(f"reloaded {server.config.path}" if reloaded else notify.NOT_RELOADED)
            continue
        if signum == END_GRACE_SIGNAL:
            log.info("the supervisor received a second stop signal: ending the grace period")
            if not server.draining:
                server.stop()  # before the first one, which may come after this
            server.stop()
            continue
        if server.draining:
            log.info("received %s again: ending the grace period", signal.Signals(signum).name)
        else:
            log.info("received %s", signal.Signals(signum).name)
        server.stop()


async def serve(
    config: Config,
    sockets: list[socket.socket],
    *,
    reload: Callable[[], Config] | None = None,
    worker: int = 0,
    workers: int = 1,
    metrics: Metrics = NULL_METRICS,
    metrics_sockets: list[socket.socket] | None = None,
    admission: Admission | None = None,
    task_status: trio.TaskStatus[list[Any]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The command line's serve: `server.serve` plus the signal task, until SIGTERM/SIGINT
    (then drain and return).  `metrics`, `metrics_sockets`: as for server.serve;
    `admission`: with Workers, one counting in the workers' shared table (service.py)."""
    if not 0 <= worker < workers:
        raise ValueError(f"worker {worker} is not in 0..{workers - 1}")
    server = Server(config, reload, worker, workers, metrics)
    if admission is not None:
        server.admission = admission
    handled = HANDLED_SIGNALS + ((END_GRACE_SIGNAL,) if workers > 1 else ())
    with trio.open_signal_receiver(*handled) as received:
        # The command line blocks these from before bind until now (the supervisor blocks
        # END_GRACE_SIGNAL before it forks), so that a signal sent during start-up waits for
        # this receiver instead of killing a half-started process (pid file left behind).
        # Filters inherit the unblocked mask.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, handled)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(handle_signals, server, received)
                if reaper.subreaper_enabled():
                    nursery.start_soon(reaper.sweep_forever)
                await server.serve(
                    sockets, metrics_sockets=metrics_sockets, task_status=task_status
                )
                nursery.cancel_scope.cancel()
        finally:
            if workers > 1:  # one coming late must not kill the worker on its way out
                signal.pthread_sigmask(signal.SIG_BLOCK, {END_GRACE_SIGNAL})
