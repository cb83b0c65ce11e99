"""The metrics interface the relay calls: `Metrics` records nothing, `NULL_METRICS` is
the one used without MetricsListen.  The Prometheus side (`daemon/prometheus.py`) subclasses
it; the relay and the stages never import prometheus-client.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["NULL_METRICS", "Metrics", "reply_class"]


def reply_class(code: int | None) -> str:
    """The label for a final reply: "2xx", "4xx", "5xx" (others as "Nxx"), "none"."""
    if code is None or not 100 <= code <= 599:
        return "none"
    return f"{code // 100}xx"


class Metrics:
    """The recording API the relay calls; this base class records nothing (NULL_METRICS)."""

    enabled = False

    def connection_accepted(self) -> None:
        """A connection was accepted (counted before any limit or PROXY check)."""

    def connection_refused(self, reason: str) -> None:
        """An accepted connection was turned away: "busy" or "proxy-..." (see above)."""

    def connection_opened(self) -> None:
        """A session started: connections_active goes up until connection_closed."""

    def connection_closed(self) -> None:
        """The session of an earlier connection_opened ended."""

    def message_done(self, status: str, upstream_code: int | None, size: int | None) -> None:
        """A message ended with this summary status, final upstream reply and size (bytes;
        None when no message was read: refused at DATA, or the client left in it)."""

    def filter_ran(self, seconds: float) -> None:
        """The filter ran for this long (whatever its verdict)."""

    def filter_failed(self, reason: str) -> None:
        """The filter failed: "error" (crashed, killed) or "timeout" (FilterTimeout)."""

    def scanner_done(self, scanner: str, result: str, seconds: float) -> None:
        """A scanner ("spamd", "clamd") gave its result ("pass", "reject", "failed")
        after this long."""

    def scanner_failed(self, scanner: str, reason: str) -> None:
        """A scanner failed: "error" (down, cut short, garbage) or "timeout"."""

    def left_after_commit(self) -> None:
        """The client left after its message's final "." went to the next server, before
        it heard the reply: the duplicate window (docs/behaviour.md §8.1)."""

    def upstream_round_trip(self, seconds: float) -> None:
        """The next server took this long to answer one command."""

    def bytes_received(self, peer: str, count: int) -> None:
        """`count` bytes were read from "client" or "upstream"."""

    def bytes_sent(self, peer: str, count: int) -> None:
        """`count` bytes were written to "client" or "upstream"."""

    def tls_started(self, side: str) -> None:
        """A TLS handshake with "client" or "upstream" completed."""

    def tls_handshake_failed(self, side: str) -> None:
        """A TLS handshake with "client" or "upstream" failed or timed out."""

    def upstream_connect_failed(self, reason: str) -> None:
        """The next server could not be used: "refused" (the connection failed), "timeout"
        (TimeOut while connecting), "tls" (its TLS handshake failed) or "banner" (no 2xx
        banner: another reply, garbage, silence or a hang-up)."""

    def stress_changed(self, on: bool) -> None:
        """Stress mode (StressTimeOut applies) went on or off in this process."""

    def log_lines_dropped(self, count: int) -> None:
        """`count` log lines were dropped: the syslog socket or stderr was full (the log
        handlers call it, through common/log_handlers.py `set_drop_counter`)."""

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """connection_opened ... connection_closed around a block."""
        self.connection_opened()
        try:
            yield
        finally:
            self.connection_closed()

    def exposition(self) -> tuple[bytes, str]:
        """The body and content type of a /metrics response."""
        raise RuntimeError("metrics are off (no MetricsListen)")


NULL_METRICS = Metrics()
