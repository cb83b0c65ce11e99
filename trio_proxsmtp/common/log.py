"""Logging as proxsmtpd does it (docs/behaviour.md §9): syslog `mail` as a daemon, stderr with -d.

Everything goes through the stdlib logger LOGGER_NAME and its children. Every line names
the process as ``proxsmtpd[PID]:`` (the syslog ident with the pid, as Postfix's daemons
do); on stderr (-d) each line also starts with an ISO 8601 timestamp with milliseconds and
the UTC offset, since supervisord and friends write that stream to a file as it is:

    2026-11-29T16:55:30.123+00:00 proxsmtpd[4242]: 6933A1B20010920001: accepted ...

Lines about one connection carry the connection's id, so that one session can be grepped
out of a busy log. ``connection_ids()`` makes ids that stay unique across restarts and
worker processes, like Postfix's long queue ids: 8 hex digits of the process's start time
(Unix seconds), 6 of its pid, then a counter of at least 4 hex digits (see ConnectionIds).

In daemon mode there must be a syslog socket (``/dev/log``, or the path in the environment
variable PROXSMTPD_SYSLOG_SOCKET): without one ``setup_logging`` raises
LoggingUnavailable and the daemon refuses to start (its stderr is /dev/null once detached,
so "logging to stderr" would lose every line). Run with ``-d LEVEL`` under a supervisor to
log to stderr instead.

``LogFormat`` (log_format.py) chooses how a record reads: the text above, or one json or
logfmt record a line with the same keys everywhere (after the ``proxsmtpd[PID]: `` tag in
syslog); a connection's logger gives each record its id apart, as ``conn_id``.

Neither destination ever blocks the process (log_handlers.py, docs/behaviour.md §9.4): a
record that the syslog socket or stderr cannot take at once is dropped and counted, and the
log says so when it takes records again.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from collections.abc import Iterator, MutableMapping
from typing import Any

from trio_proxsmtp.common.log_format import (
    LogFormat,
    StructuredFormatter,
    TextFormatter,
)
from trio_proxsmtp.common.log_handlers import StderrHandler, SyslogHandler, stderr_outlet

LOGGER_NAME = "trio_proxsmtp"
SYSLOG_ADDRESS = "/dev/log"
# Where the admin says the syslog socket is, when it is not /dev/log (containers, chroots).
SYSLOG_SOCKET_ENV = "PROXSMTPD_SYSLOG_SOCKET"
MAX_MESSAGE = 1024  # the reference caps each message at 1024 bytes

# -d LEVEL -> the lowest stdlib level shown (docs/behaviour.md §9.1).
_DEBUG_LEVELS = {
    0: logging.ERROR,
    1: logging.WARNING,
    2: logging.WARNING,
    3: logging.INFO,
    4: logging.DEBUG,
}

_logs_to_stderr = False


class LoggingUnavailable(Exception):
    """Daemon mode without a syslog socket: nowhere to log, so the daemon must not start."""


class _Truncate(logging.Filter):
    """Cap a record's text like the reference, so one bad peer cannot flood the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if len(message) > MAX_MESSAGE:
            record.msg = message[:MAX_MESSAGE]
            record.args = None
        return True


def _install(handler: logging.Handler, level: int) -> None:
    logger = logging.getLogger(LOGGER_NAME)
    for old in list(logger.handlers):
        if getattr(old, "_trio_proxsmtp", False):
            logger.removeHandler(old)
            old.close()
    handler._trio_proxsmtp = True  # type: ignore[attr-defined]
    handler.addFilter(_Truncate())
    logger.addHandler(handler)
    logger.setLevel(level)


class _TimestampFormatter(TextFormatter):
    """``2026-11-29T16:55:30.123+00:00 proxsmtpd[PID]: message``: local time with offset."""

    def __init__(self) -> None:
        super().__init__(timestamp=True)


def _formatter(log_format: LogFormat, *, stderr: bool) -> logging.Formatter:
    """The text format as before (stderr with timestamps), or json/logfmt lines (the
    syslog ones after the ``proxsmtpd[PID]: `` tag)."""
    if log_format is LogFormat.TEXT:
        return _TimestampFormatter() if stderr else TextFormatter(timestamp=False)
    return StructuredFormatter(log_format, ident=not stderr)


def _stderr_handler(log_format: LogFormat = LogFormat.TEXT) -> logging.Handler:
    outlet = stderr_outlet(sys.stderr)
    handler: logging.Handler
    if outlet is None:  # no descriptor (a test's captured stderr): written as it is
        handler = logging.StreamHandler(sys.stderr)
    else:
        handler = StderrHandler(outlet, getattr(sys.stderr, "encoding", None))
    handler.setFormatter(_formatter(log_format, stderr=True))
    return handler


def _syslog_unavailable(path: str) -> str | None:
    """Why nobody listens on the syslog socket, or None if someone does.

    The handler retries the connection after a failed send, quietly, so we ask first.
    """
    reason = "unknown error"
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_UNIX, kind) as sock:
            try:
                sock.connect(path)
            except OSError as exc:
                reason = exc.strerror or str(exc)
            else:
                return None
    return reason


def setup_logging(
    debug_level: int | None,
    *,
    syslog_address: str | None = None,
    log_format: LogFormat = LogFormat.TEXT,
) -> None:
    """None: daemon mode, syslog facility mail; 0..4: stderr, with timestamps.

    Raises LoggingUnavailable in daemon mode when nothing listens on the syslog socket.
    Safe to call again: it replaces the handler it installed before.
    """
    global _logs_to_stderr
    if debug_level is not None:
        if debug_level not in _DEBUG_LEVELS:
            raise ValueError(f"debug level must be 0..4, not {debug_level}")
        _install(_stderr_handler(log_format), _DEBUG_LEVELS[debug_level])
        _logs_to_stderr = True
        return
    if syslog_address is None:
        syslog_address = os.environ.get(SYSLOG_SOCKET_ENV) or SYSLOG_ADDRESS
    reason = _syslog_unavailable(syslog_address)
    if reason is not None:
        raise LoggingUnavailable(
            f"no syslog socket at {syslog_address} ({reason}): start a syslog daemon, set "
            f"{SYSLOG_SOCKET_ENV} to its socket, or run in the foreground with -d LEVEL "
            "to log to stderr"
        )
    syslog = SyslogHandler(syslog_address)
    # The pid is the process's at the time of the record: the daemon and each worker
    # are forked after this call.
    syslog.setFormatter(_formatter(log_format, stderr=False))
    _install(syslog, logging.INFO)
    _logs_to_stderr = False


def logs_to_stderr() -> bool:
    """Whether the last setup_logging sends records to stderr (so errors need no second copy)."""
    return _logs_to_stderr


class ConnectionLogger(logging.LoggerAdapter[logging.Logger]):
    """Prefixes every message with the connection id: "6933A1B20010920001: " (a str id from
    connection_ids), or "100A3F: " (an int id, six hex digits, as the first release)."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        assert self.extra is not None
        conn_id = self.extra["conn_id"]
        text = conn_id if isinstance(conn_id, str) else f"{conn_id:06X}"
        # The id in the text (the text format, greps) and apart (the id key of json/logfmt).
        kwargs["extra"] = {**kwargs.get("extra", {}), "conn_id": text}
        return f"{text}: {msg}", kwargs


def connection_logger(conn_id: int | str) -> logging.LoggerAdapter[logging.Logger]:
    """A logger for one connection; every line carries its id."""
    return ConnectionLogger(logging.getLogger(LOGGER_NAME), {"conn_id": conn_id})


ID_PATTERN = r"[0-9A-F]{18,}"  # a connection id as connection_ids makes them


def connection_ids(*, now: float | None = None, pid: int | None = None) -> Iterator[str]:
    """Connection ids unique across restarts and worker processes, greppable as hex.

    ``TTTTTTTTPPPPPPCCCC``: TTTTTTTT the process's start time (Unix seconds, 8 hex digits),
    PPPPPP its pid (6 hex digits, Linux pids are below 2**22), CCCC a per-process counter
    from 1 (4 hex digits, more once it passes FFFF). A restarted proxy or another worker has
    another start time or pid, so its ids never repeat earlier ones. Call it in the process
    that serves (after fork), once.
    """
    start = int(time.time() if now is None else now) & 0xFFFFFFFF
    prefix = f"{start:08X}{(os.getpid() if pid is None else pid) & 0xFFFFFF:06X}"
    counter = 0
    while True:
        counter += 1
        yield f"{prefix}{counter:04X}"


_ids: tuple[int, Iterator[str]] | None = None  # (pid, this process's connection ids)


def process_connection_ids() -> Iterator[str]:
    """This process's connection ids, made on first use and shared by every server in it
    (in-process servers in tests never repeat an id either); a forked worker (another
    pid) starts its own, with its own pid in them."""
    global _ids
    pid = os.getpid()
    if _ids is None or _ids[0] != pid:
        _ids = (pid, connection_ids(pid=pid))
    return _ids[1]
