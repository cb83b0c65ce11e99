"""Prometheus metrics (`MetricsListen`): what the relay records, and /metrics over HTTP.

The relay holds one `Metrics` object and calls its methods as things happen.  Without
MetricsListen that object is `NULL_METRICS`, whose methods do nothing (one method call is
the whole cost); with it, `PrometheusMetrics` counts with prometheus-client, and the
exposition is prometheus-client's own (`generate_latest`), never written by hand.

Metric names (all start with ``proxsmtpd_``):

    connections_accepted_total               every connection accepted
    connections_refused_total{reason}        "busy" (MaxConnections), "proxy-untrusted",
                                             "proxy-invalid", "proxy-timeout" (PROXY header)
    connections_active                       sessions open now
    messages_total{status,upstream}          one per message: status is the summary line's
                                             (FILTERED, PASSED, SKIPPED, REJECTED, DEFERRED,
                                             DROPPED, FILTER-ERROR, TOO-BIG);
                                             upstream is the next server's final reply class
                                             "2xx"/"4xx"/"5xx", or "none" without one
    message_size_bytes                       histogram of message sizes as received
    filter_duration_seconds                  histogram of filter run times
    filter_failures_total{reason}            "error" (crash, signal) or "timeout"
    scanner_verdicts_total{scanner,result}   per native scanner (spamd, clamd): "pass",
                                             "reject" or "failed"
    scanner_failures_total{scanner,reason}   "error" (down, cut short, garbage) or "timeout"
    scanner_duration_seconds{scanner}        histogram of scan times
    left_after_commit_total                  clients that left after their message's final
                                             "." went to the next server, before its reply
                                             (a duplicate may come: docs/behaviour.md §8.1)
    upstream_round_trip_seconds              histogram: a command to the next server and
                                             its reply
    bytes_received_total{peer}               bytes read from "client" / "upstream"
    bytes_sent_total{peer}                   bytes written to "client" / "upstream"
    tls_sessions_total{side}                 TLS handshakes done with "client" / "upstream"
    tls_handshake_failures_total{side}       TLS handshakes failed or timed out, with
                                             "client" (STARTTLS, ListenTLS) / "upstream"
    upstream_connect_failures_total{reason}  the next server could not be used: "refused"
                                             (connecting failed), "timeout", "tls" (its
                                             handshake failed), "banner" (no 2xx banner)
    stress                                   1 while some worker is in stress mode, else 0
    worker_restarts_total                    workers that died and were started again
                                             (Workers: N; counted by the supervisor)
    log_lines_dropped_total                  log lines dropped: the syslog socket or stderr
                                             was full (docs/behaviour.md §9.4)

Every labelled series exists from start-up at zero for the label values known then (every
status with every reply class, the refusal and failure reasons, both peers and sides), so
that an alert on a rate sees 0 rather than "no data" (docs/behaviour.md §11.11).

Several workers (`Workers: N`): every worker records into files of prometheus-client's
multi-process mode, in a directory that the supervisor makes before it forks the workers
(`MultiprocessDirectory`) and removes when it exits; a scrape adds up the files of all
workers, so it shows the totals.  When a worker dies, its files stay: the counts and
histograms it made keep counting toward the totals (the replacement worker starts its own
files), so no counter goes backwards; only its share of the live gauges (`connections_active`, a
"livesum", and `stress`, a "livemax") is dropped, by `MultiprocessDirectory.worker_died`,
which also counts the restart (in the supervisor's own files there, summed like the rest).
The totals restart from zero only when the whole service restarts, which Prometheus sees
as an ordinary counter reset.

Who serves /metrics: the process with worker index 0 (the only process with Workers: 1).
Its listening socket is bound by the command line at start-up like Listen (so a port below
1024 works with User, and a bind error stops start-up), and it is inherited by all
workers; while worker 0 is being restarted a scrape waits in the socket's backlog.  The
supervisor stays without threads or Trio: it forks replacement workers, and forking a
process that runs an HTTP server thread could copy a lock held by that thread.

The HTTP side, a small HTTP/1.0 responder over Trio with its deadlines and its bound on
connections, is metrics_http.py.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from types import TracebackType
from typing import Any, TypeVar, cast

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)

from trio_proxsmtp.common.address import Address
from trio_proxsmtp.common.metrics import Metrics, reply_class
from trio_proxsmtp.daemon.listeners import bind_tcp
from trio_proxsmtp.protocol.message.summary import Status

__all__ = [
    "MULTIPROC_ENV",
    "MultiprocessDirectory",
    "PrometheusMetrics",
    "bind_metrics_listener",
    "use_multiprocess_dir",
]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
PREFIX = "proxsmtpd"
SIZE_BUCKETS = tuple(float(2**n) for n in range(10, 27, 2))  # 1 KiB .. 64 MiB
FILTER_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ROUND_TRIP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
_Metric = TypeVar("_Metric", Counter, Gauge, Histogram)
# The label values known at start-up (`_zeros`).
REFUSAL_REASONS = ("busy", "proxy-untrusted", "proxy-invalid", "proxy-timeout")
UPSTREAM_CLASSES = ("2xx", "4xx", "5xx", "none")
FILTER_FAILURES = ("error", "timeout")
PEERS = ("client", "upstream")  # bytes_*_total{peer}, tls_*_total{side}
CONNECT_FAILURES = ("refused", "timeout", "tls", "banner")


def use_multiprocess_dir(directory: str) -> None:
    """Make metrics created from now on, here and in forked children, write to `directory`.

    prometheus-client chooses between in-memory and file-backed values once, when it is
    imported, from the environment; the command line imports it long before the supervisor
    makes the directory, so the choice is made again here.
    """
    os.environ[MULTIPROC_ENV] = directory
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


class MultiprocessDirectory:
    """The supervisor's multi-process metrics directory: made before the first fork, the
    dead workers' live gauges dropped, removed at exit.  A context manager."""

    def __init__(self, parent: str | None = None) -> None:
        self.path = tempfile.mkdtemp(prefix="proxsmtpd-metrics.", dir=parent)
        use_multiprocess_dir(self.path)
        # Written by the supervisor, in files of its own pid: at zero from the start.
        self._restarts = worker_restarts_counter(None)

    def worker_died(self, pid: int, replaced: bool = False) -> None:
        """Drop the dead worker's share of the live gauges; its counters stay (see above).
        `replaced`: it died while the service runs on, and a new worker takes its place
        (not when stopping)."""
        multiprocess.mark_process_dead(pid, self.path)  # type: ignore[no-untyped-call]
        if replaced:
            self._restarts.inc()

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        if os.environ.get(MULTIPROC_ENV) == self.path:
            del os.environ[MULTIPROC_ENV]

    def __enter__(self) -> MultiprocessDirectory:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def worker_restarts_counter(registry: CollectorRegistry | None) -> Counter:
    """Counted by the supervisor; every PrometheusMetrics has it at zero (Workers: 1)."""
    return Counter(
        f"{PREFIX}_worker_restarts",
        "Workers that died and were started again (Workers: N)",
        registry=registry,
    )


class PrometheusMetrics(Metrics):
    """Metrics counted with prometheus-client.

    Without `multiprocess_dir` the metrics live in this process, in their own registry (so
    tests and reloads never collide in the library's global one).  With it (the supervisor's
    MultiprocessDirectory path, also in the environment of every worker), every process
    writes its own files there and `exposition` adds up all of them.
    """

    enabled = True

    def __init__(self, multiprocess_dir: str | None = None) -> None:
        self._multiprocess_dir = multiprocess_dir
        if multiprocess_dir is not None:
            if os.environ.get(MULTIPROC_ENV) != multiprocess_dir:
                use_multiprocess_dir(multiprocess_dir)
            registry: CollectorRegistry | None = None  # values go to files; all are read
        else:
            registry = CollectorRegistry()
        self._registry = registry

        def name(text: str) -> str:
            return f"{PREFIX}_{text}"

        self._accepted = Counter(
            name("connections_accepted"), "Connections accepted", registry=registry
        )
        self._refused = Counter(
            name("connections_refused"),
            "Accepted connections turned away, by reason",
            ["reason"],
            registry=registry,
        )
        self._active = Gauge(
            name("connections_active"),
            "Sessions open now",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._messages = Counter(
            name("messages"),
            "Messages by summary status and the next server's final reply class",
            ["status", "upstream"],
            registry=registry,
        )
        self._sizes = Histogram(
            name("message_size_bytes"),
            "Sizes of the messages received",
            buckets=SIZE_BUCKETS,
            registry=registry,
        )
        self._filter_time = Histogram(
            name("filter_duration_seconds"),
            "Filter run times",
            buckets=FILTER_BUCKETS,
            registry=registry,
        )
        self._filter_failures = Counter(
            name("filter_failures"),
            "Filter runs that failed, by reason (error, timeout)",
            ["reason"],
            registry=registry,
        )
        self._scanner_verdicts = Counter(
            name("scanner_verdicts"),
            "Native scanner results, by scanner and result (pass, reject, failed)",
            ["scanner", "result"],
            registry=registry,
        )
        self._scanner_failures = Counter(
            name("scanner_failures"),
            "Native scanner failures, by scanner and reason (error, timeout)",
            ["scanner", "reason"],
            registry=registry,
        )
        self._scanner_time = Histogram(
            name("scanner_duration_seconds"),
            "Native scanner scan times",
            ["scanner"],
            buckets=FILTER_BUCKETS,
            registry=registry,
        )
        self._left_after_commit = Counter(
            name("left_after_commit"),
            "Clients that left after their message went to the next server, before its reply",
            registry=registry,
        )
        self._round_trip = Histogram(
            name("upstream_round_trip_seconds"),
            "Time from a command to the next server until its reply",
            buckets=ROUND_TRIP_BUCKETS,
            registry=registry,
        )
        self._received = Counter(
            name("bytes_received"), "Bytes read, by peer", ["peer"], registry=registry
        )
        self._sent = Counter(
            name("bytes_sent"), "Bytes written, by peer", ["peer"], registry=registry
        )
        self._tls = Counter(
            name("tls_sessions"), "TLS handshakes completed, by side", ["side"], registry=registry
        )
        self._tls_failures = Counter(
            name("tls_handshake_failures"),
            "TLS handshakes failed or timed out, by side",
            ["side"],
            registry=registry,
        )
        self._connect_failures = Counter(
            name("upstream_connect_failures"),
            "Times the next server could not be used, by reason (refused, timeout, tls, banner)",
            ["reason"],
            registry=registry,
        )
        self._stress = Gauge(
            name("stress"),
            "1 while stress mode (StressTimeOut) is on in some worker",
            registry=registry,
            multiprocess_mode="livemax",
        )
        worker_restarts_counter(registry)
        self._log_dropped = Counter(
            name("log_lines_dropped"),
            "Log lines dropped because the syslog socket or stderr was full",
            registry=registry,
        )
        # Label lookups cost more than the increments: keep the children.
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._zeros()

    def _zeros(self) -> None:
        """Every labelled series the proxy can produce, at zero from the start (with the
        label values known now), so that an alert on it sees 0, not "no data"."""
        for reason in REFUSAL_REASONS:
            self._child(self._refused, reason)
        for status in Status:
            for upstream in UPSTREAM_CLASSES:
                self._child(self._messages, status.value, upstream)
        for reason in FILTER_FAILURES:
            self._child(self._filter_failures, reason)
        for peer in PEERS:
            self._child(self._received, peer)
            self._child(self._sent, peer)
            self._child(self._tls, peer)
            self._child(self._tls_failures, peer)
        for reason in CONNECT_FAILURES:
            self._child(self._connect_failures, reason)

    def _child(self, metric: _Metric, *labels: str) -> _Metric:
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return cast(_Metric, child)

    def connection_accepted(self) -> None:
        self._accepted.inc()

    def connection_refused(self, reason: str) -> None:
        self._child(self._refused, reason).inc()

    def connection_opened(self) -> None:
        self._active.inc()

    def connection_closed(self) -> None:
        self._active.dec()

    def message_done(self, status: str, upstream_code: int | None, size: int | None) -> None:
        self._child(self._messages, status, reply_class(upstream_code)).inc()
        if size is not None:
            self._sizes.observe(size)

    def filter_ran(self, seconds: float) -> None:
        self._filter_time.observe(seconds)

    def filter_failed(self, reason: str) -> None:
        self._child(self._filter_failures, reason).inc()

    def scanner_done(self, scanner: str, result: str, seconds: float) -> None:
        self._child(self._scanner_verdicts, scanner, result).inc()
        self._child(self._scanner_time, scanner).observe(seconds)

    def scanner_failed(self, scanner: str, reason: str) -> None:
        self._child(self._scanner_failures, scanner, reason).inc()

    def left_after_commit(self) -> None:
        self._left_after_commit.inc()

    def upstream_round_trip(self, seconds: float) -> None:
        self._round_trip.observe(seconds)

    def bytes_received(self, peer: str, count: int) -> None:
        self._child(self._received, peer).inc(count)

    def bytes_sent(self, peer: str, count: int) -> None:
        self._child(self._sent, peer).inc(count)

    def tls_started(self, side: str) -> None:
        self._child(self._tls, side).inc()

    def tls_handshake_failed(self, side: str) -> None:
        self._child(self._tls_failures, side).inc()

    def upstream_connect_failed(self, reason: str) -> None:
        self._child(self._connect_failures, reason).inc()

    def stress_changed(self, on: bool) -> None:
        self._stress.set(1 if on else 0)

    def log_lines_dropped(self, count: int) -> None:
        self._log_dropped.inc(count)

    def exposition(self) -> tuple[bytes, str]:
        if self._registry is not None:
            return generate_latest(self._registry), CONTENT_TYPE_LATEST
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self._multiprocess_dir)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST


# --- the HTTP listener (served by metrics_http.py) ------------------------------------------


def bind_metrics_listener(address: Address, backlog: int = 16) -> list[socket.socket]:
    """Bind MetricsListen (every address the name resolves to), as the command line does for
    Listen: before detaching and before User, so that errors reach the shell."""
    return bind_tcp(address, backlog=backlog)
