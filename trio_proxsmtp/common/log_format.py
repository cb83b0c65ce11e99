"""How a log record reads (``LogFormat``, docs/behaviour.md §9.5): text, json or logfmt.

``text`` is the format of the first release, byte for byte.  ``json`` and ``logfmt`` give
every record the same keys, one record a line, for log shippers (Loki, Elasticsearch,
Vector):

    time    ISO 8601, milliseconds and UTC offset: 2026-11-29T16:55:30.123+00:00
    level   debug, info, warning, error, critical
    pid     the process that wrote it
    worker  its worker index (Workers: N), null (logfmt: empty) in the supervisor
    id      the connection's id, null (logfmt: empty) for a line about the process
    event   what the line is: "summary" (one per message), "disconnect" (one per
            connection), "listening", "metrics", or "log" for any other line
    msg     the text the text format shows (without the id)

and then the event's own fields as keys: the summary's (``client``, ``via``, ``from``,
``to``, ``status``, ``milter``/``filter``, ``reason``, ``upstream``, ``relay``, ``size``,
``delay``, ``delays``) and the disconnect line's (``client``, ``via``, one count per
command verb, ``commands``, ``duration``).  In json ``to`` is always a list, ``size`` and
the counts are numbers, ``delay`` and ``duration`` seconds as numbers.  In logfmt a value
with a space, a quote, an ``=`` or a control character is double-quoted (``\\"`` and
``\\\\`` inside), ``to=`` repeats.

A record is given an event and fields with ``extra=structured(EVENT, FIELDS)``; the
connection's logger adds ``conn_id`` (log.py).
"""

from __future__ import annotations

import enum
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from trio_proxsmtp.protocol.message.summary import render

__all__ = [
    "LogFormat",
    "StructuredFormatter",
    "TextFormatter",
    "iso_time",
    "set_worker",
    "structured",
]

SYSLOG_IDENT = "proxsmtpd"

# Keys that a structured line always has, in this order, before the event's own.
BASE_KEYS = ("time", "level", "pid", "worker", "id", "event", "msg")

_worker: int | None = None


class LogFormat(enum.Enum):
    TEXT = "text"
    JSON = "json"
    LOGFMT = "logfmt"


def set_worker(index: int | None) -> None:
    """This process's worker index for the ``worker`` key (None: the supervisor)."""
    global _worker
    _worker = index


Fields = Sequence[tuple[str, Any]]


def structured(event: str, fields: Fields | Callable[[], Fields] = ()) -> dict[str, Any]:
    """The ``extra`` of a record that is an event with fields (a summary, a disconnect);
    `fields` may be a function, called only when the record is formatted."""
    return {"event": event, "fields": fields}


def iso_time(record: logging.LogRecord) -> str:
    """``2026-11-29T16:55:30.123+00:00``: local time, milliseconds, UTC offset."""
    local = time.localtime(record.created)
    stamp, offset = time.strftime("%Y-%m-%dT%H:%M:%S", local), time.strftime("%z", local)
    return f"{stamp}.{int(record.msecs):03d}{offset[:3]}:{offset[3:]}"


class TextFormatter(logging.Formatter):
    """The first release's lines: ``proxsmtpd[PID]: message``, with `timestamp` (stderr)
    ``2026-11-29T16:55:30.123+00:00 proxsmtpd[PID]: message``."""

    def __init__(self, *, timestamp: bool) -> None:
        head = "%(asctime)s " if timestamp else ""
        super().__init__(f"{head}{SYSLOG_IDENT}[%(process)d]: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return iso_time(record)


def _text(record: logging.LogRecord) -> tuple[str, str | None]:
    """The record's text without the connection id the connection's logger put first."""
    message = record.getMessage()
    conn_id = getattr(record, "conn_id", None)
    if conn_id and message.startswith(f"{conn_id}: "):
        message = message[len(conn_id) + 2 :]
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        message = f"{message}\n{record.exc_text}"
    return message, conn_id


def _logfmt_value(value: Any) -> str:
    if value is None:
        return ""
    text = render(value)
    if text and not any(c in text for c in ' "=\\') and text.isprintable():
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    escaped = escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f'"{escaped}"'


class StructuredFormatter(logging.Formatter):
    """One json object or one logfmt line per record (see the module docstring); with
    `ident` (syslog) the line starts ``proxsmtpd[PID]: `` as the text format's."""

    def __init__(self, fmt: LogFormat, *, ident: bool = False) -> None:
        super().__init__()
        if fmt is LogFormat.TEXT:
            raise ValueError("the text format is TextFormatter's")
        self.fmt = fmt
        self.ident = ident

    def record_fields(self, record: logging.LogRecord) -> list[tuple[str, Any]]:
        message, conn_id = _text(record)
        base: list[tuple[str, Any]] = [
            ("time", iso_time(record)),
            ("level", record.levelname.lower()),
            ("pid", record.process),
            ("worker", _worker),
            ("id", conn_id),
            ("event", getattr(record, "event", "log")),
            ("msg", message),
        ]
        fields = getattr(record, "fields", ())
        if callable(fields):
            fields = fields()
        extra = [(k, v) for k, v in fields if k not in BASE_KEYS]
        return base + extra

    def format(self, record: logging.LogRecord) -> str:
        fields = self.record_fields(record)
        if self.fmt is LogFormat.JSON:
            data: dict[str, Any] = {}
            for key, value in fields:
                if key == "to":
                    data.setdefault("to", []).append(value)
                else:
                    data[key] = value
            if getattr(record, "event", None) == "summary":
                data.setdefault("to", [])
            line = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        else:
            line = " ".join(f"{key}={_logfmt_value(value)}" for key, value in fields)
        return f"{SYSLOG_IDENT}[{record.process}]: {line}" if self.ident else line
