"""Logging as proxsmtpd does it (docs/behaviour.md §9): syslog `mail` as a daemon, stderr with -d.

Everything goes through the stdlib logger LOGGER_NAME and its children. Lines about one
connection carry the connection's id as six hex digits (ids start at 0x100000, so they read
"100000"), so that one session can be grepped out of a busy log.
"""

from __future__ import annotations

import logging
import logging.handlers
import socket
import sys
from collections.abc import MutableMapping
from typing import Any

LOGGER_NAME = "trio_proxsmtp"
SYSLOG_IDENT = "proxsmtpd"
SYSLOG_ADDRESS = "/dev/log"
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


def _stderr_handler() -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{SYSLOG_IDENT}: %(message)s"))
    return handler


def _syslog_unavailable(path: str) -> str | None:
    """Why nobody listens on the syslog socket, or None if someone does.

    SysLogHandler swallows the connect error and retries on every record, so we ask first.
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


def setup_logging(debug_level: int | None, *, syslog_address: str = SYSLOG_ADDRESS) -> None:
    """None: daemon mode, syslog facility mail (stderr if there is no syslog); 0..4: stderr.

    Safe to call again: it replaces the handler it installed before.
    """
    global _logs_to_stderr
    if debug_level is not None:
        if debug_level not in _DEBUG_LEVELS:
            raise ValueError(f"debug level must be 0..4, not {debug_level}")
        _install(_stderr_handler(), _DEBUG_LEVELS[debug_level])
        _logs_to_stderr = True
        return
    reason = _syslog_unavailable(syslog_address)
    if reason is not None:
        _install(_stderr_handler(), logging.INFO)
        _logs_to_stderr = True
        logging.getLogger(LOGGER_NAME).warning(
            "no syslog socket at %s (%s): logging to stderr", syslog_address, reason
        )
        return
    syslog = logging.handlers.SysLogHandler(
        syslog_address, facility=logging.handlers.SysLogHandler.LOG_MAIL
    )
    syslog.ident = f"{SYSLOG_IDENT}: "
    syslog.setFormatter(logging.Formatter("%(message)s"))
    _install(syslog, logging.INFO)
    _logs_to_stderr = False


def logs_to_stderr() -> bool:
    """Whether the last setup_logging sends records to stderr (so errors need no second copy)."""
    return _logs_to_stderr


class ConnectionLogger(logging.LoggerAdapter[logging.Logger]):
    """Prefixes every message with the connection id, as "100A3F: "."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        assert self.extra is not None
        return f"{self.extra['conn_id']:06X}: {msg}", kwargs


def connection_logger(conn_id: int) -> logging.LoggerAdapter[logging.Logger]:
    """A logger for one connection; every line carries its id."""
    return ConnectionLogger(logging.getLogger(LOGGER_NAME), {"conn_id": conn_id})
