"""Serving, once start-up is done: one process that serves, or the supervisor of Workers.

With `Workers: N` > 1 "serve" means: fork N workers that serve the bound sockets, and stay
as their supervisor (workers.py); the pid file holds the supervisor's pid and is removed by
it. With N = 1 the process serves itself, as proxsmtpd does.  Each serving process runs
`signals.serve` under `trio.run`, adopts its filters' orphans (reaper.py) and reloads the
config file on SIGHUP.  With MetricsListen, log lines dropped because the log could not
keep up are counted (common/log_handlers.py).  The supervisor cleans up after a worker
that died: its filters are killed (workers.py) and its named files in TempDirectory
removed (spool.py `sweep_files`), and its clients no longer counted in the workers'
shared MaxConnectionsPerClient table (client_table.py), docs/behaviour.md §11.7.
"""

from __future__ import annotations

import functools
import logging
import socket
from collections.abc import Callable

import trio

from trio_proxsmtp.common.log import LOGGER_NAME
from trio_proxsmtp.common.log_format import set_worker
from trio_proxsmtp.common.log_handlers import set_drop_counter
from trio_proxsmtp.config.loader import load_config, load_config_with_warnings
from trio_proxsmtp.config.model import Config
from trio_proxsmtp.daemon import announce, notify, signals
from trio_proxsmtp.daemon.admission import Admission, WorkerCounts
from trio_proxsmtp.daemon.client_table import ClientTable, table_capacity
from trio_proxsmtp.daemon.listeners import (
    is_tls_listener,
    remove_unix_socket_files,
    socket_name,
    unix_socket_files,
)
from trio_proxsmtp.daemon.prometheus import MultiprocessDirectory, PrometheusMetrics
from trio_proxsmtp.daemon.reload import applicable_reload
from trio_proxsmtp.daemon.workers import Supervisor
from trio_proxsmtp.stages import reaper, spool

__all__ = ["serve", "supervise"]

log = logging.getLogger(LOGGER_NAME)


def serve(
    config: Config,
    sockets: list[socket.socket],
    config_path: str,
    worker: tuple[int, int] | None = None,
    *,
    metrics_sockets: list[socket.socket] | None = None,
    metrics_dir: str | None = None,
    client_table: ClientTable | None = None,
) -> int:
    """Serve until stopped; `worker` is (index, count) in a worker process.

    With `metrics_sockets` (MetricsListen) metrics are counted, and served by worker 0;
    `metrics_dir` is the supervisor's multi-process directory (Workers: N);
    `client_table` the workers' shared MaxConnectionsPerClient counts."""
    # Every process that runs filters adopts their orphans (reaper.py): after detaching,
    # and in each worker; never inside server.serve(), so in-process tests stay ordinary.
    # (Undone on return: main() may run in-process, as in tests.)
    set_worker(0 if worker is None else worker[0])  # the worker= of json/logfmt lines
    subreaper = reaper.enable_subreaper()  # logs a warning where the kernel cannot
    reload: Callable[[], Config] = functools.partial(_reload, config_path)
    run = functools.partial(signals.serve, reload=reload)
    if metrics_sockets:
        metrics = PrometheusMetrics(metrics_dir)
        set_drop_counter(metrics.log_lines_dropped)
        run = functools.partial(run, metrics=metrics)
        if worker is None or worker[0] == 0:
            run = functools.partial(run, metrics_sockets=metrics_sockets)
        else:
            for sock in metrics_sockets:
                sock.close()  # worker 0 serves them; the supervisor keeps its own copies
    if worker is not None:
        run = functools.partial(run, worker=worker[0], workers=worker[1])
        if client_table is not None:
            admission = Admission(WorkerCounts(client_table, worker[0]))
            run = functools.partial(run, admission=admission)
    try:
        trio.run(run, config, sockets)
    except KeyboardInterrupt:
        pass
    except Exception:
        log.exception("fatal error")
        return 1
    finally:
        set_drop_counter(None)
        set_worker(None)
        if subreaper:
            reaper.disable_subreaper()
    return 0


def supervise(
    config: Config,
    sockets: list[socket.socket],
    config_path: str,
    metrics_sockets: list[socket.socket],
) -> int:
    """Run config.workers workers on `sockets` until SIGTERM/SIGINT; we supervise them.

    With MetricsListen the workers count into a multi-process metrics directory made here
    before the first fork and removed at exit (prometheus.py); worker 0 serves /metrics."""
    count = config.workers
    current = config
    unix_paths = unix_socket_files(sockets)
    directory = MultiprocessDirectory() if metrics_sockets else None
    # MaxConnectionsPerClient counted over all workers (client_table.py).
    table = _client_table(count, config)
    # Every TempDirectory a worker may have used: a reload may change it.
    temp_directories = {config.temp_directory}

    def work(index: int) -> int:
        notify.forget()  # the supervisor speaks for the service
        return serve(
            current,
            sockets,
            config_path,
            (index, count),
            metrics_sockets=metrics_sockets,
            metrics_dir=directory.path if directory is not None else None,
            client_table=table,
        )

    def on_hup() -> None:
        # Only for workers started from now on; each running worker reloads (and logs) itself.
        nonlocal current
        notify.reloading()
        try:
            new = load_config(config_path)
        except Exception:
            notify.ready(notify.NOT_RELOADED)
            return
        applied = applicable_reload(current, new, count)[0]
        current = applied or current
        temp_directories.add(current.temp_directory)
        notify.ready(
            f"{count} workers; reloaded {config_path}"
            if applied is not None
            else notify.NOT_RELOADED
        )

    def on_worker_exit(pid: int) -> None:
        # Called before the worker's zombie is reaped, so no other process has its pid,
        # which names its files; its filters are dead by now (workers.py).
        for temp in sorted(temp_directories):
            for path in spool.sweep_files(temp, pid):
                log.warning("removed %s, left behind by worker pid %d", path, pid)
        if directory is not None:
            directory.worker_died(pid, replaced=not supervisor.stopping)  # counts restarts
        # Its clients are gone with it: before its replacement takes its column.
        slot = supervisor.pids.get(pid)
        if table is not None and slot is not None and table.clear_worker(slot):
            log.info("forgot the client connections of worker pid %d", pid)

    supervisor = Supervisor(
        count, work, sockets=sockets, on_hup=on_hup, on_worker_exit=on_worker_exit
    )
    try:
        announce.filtering_note(config)
        names = [
            socket_name(sock.getsockname()) + (" (TLS)" if is_tls_listener(sock) else "")
            for sock in sockets
        ]
        announce.listening(names, count)
        notify.ready(f"{count} workers listening on {config.listen}")
        return supervisor.run()
    finally:
        if table is not None:
            table.close()
        remove_unix_socket_files(unix_paths)
        if directory is not None:
            directory.close()


def _client_table(workers: int, config: Config) -> ClientTable | None:
    """The workers' shared MaxConnectionsPerClient table; None where shared memory cannot
    be had (each worker then applies its share, admission.worker_client_share)."""
    try:
        return ClientTable(workers, table_capacity(config.max_connections))
    except (OSError, AttributeError) as exc:  # AttributeError: no os.memfd_create
        log.warning(
            "MaxConnectionsPerClient: no shared table (%s); each worker applies its share", exc
        )
        return None


def _reload(path: str) -> Config:
    config, warnings = load_config_with_warnings(path)
    for warning in warnings:
        log.warning("%s", warning)
    return config
