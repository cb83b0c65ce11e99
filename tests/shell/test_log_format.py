"""LogFormat (docs/behaviour.md §9.5): json and logfmt records with the same keys, the
summary's and the disconnect line's fields as keys, text unchanged."""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from trio_proxsmtp.common.log import connection_logger, setup_logging
from trio_proxsmtp.common.log_format import (
    BASE_KEYS,
    LogFormat,
    StructuredFormatter,
    TextFormatter,
    set_worker,
    structured,
)
from trio_proxsmtp.config.loader import load_config, parse_config
from trio_proxsmtp.config.model import ConfigError
from trio_proxsmtp.daemon.reload import applicable_reload
from trio_proxsmtp.protocol.message.disconnect import Disconnect
from trio_proxsmtp.protocol.message.summary import Delays, MessageSummary, Status

CONN_ID = "6933A1B20010920001"


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("trio_proxsmtp", logging.INFO, __file__, 1, message, args, None)
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


def summary() -> MessageSummary:
    return MessageSummary(
        client="192.0.2.7",
        via="127.0.0.1",
        status=Status.REJECTED,
        sender="s@x",
        recipients=["r@x", "q@x"],
        reason='550 5.7.1 "no" = no',
        relay=None,
        size=1234,
        delays=Delays(0.01, 0.3, 0.04),
        decided_by="milter=inet:127.0.0.1:8891",
    )


def summary_record() -> logging.LogRecord:
    message = summary()
    return record(
        f"{CONN_ID}: %s",
        message.line(),
        conn_id=CONN_ID,
        **structured("summary", message.fields()),
    )


def logfmt(line: str) -> list[tuple[str, str]]:
    """A logfmt line's pairs (shlex reads the double quotes and backslashes as logfmt)."""
    return [tuple(word.split("=", 1)) for word in shlex.split(line)]  # type: ignore[misc]


@pytest.fixture(autouse=True)
def _worker() -> Iterator[None]:
    set_worker(1)
    yield
    set_worker(None)


def test_json_has_the_base_keys_then_the_summary_fields() -> None:
    data = json.loads(StructuredFormatter(LogFormat.JSON).format(summary_record()))
    assert list(data)[: len(BASE_KEYS)] == list(BASE_KEYS)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d", data["time"])
    assert (data["level"], data["pid"], data["worker"]) == ("info", os.getpid(), 1)
    assert (data["id"], data["event"]) == (CONN_ID, "summary")
    assert data["msg"] == summary().line()  # the text without the id
    assert data["client"] == "192.0.2.7" and data["via"] == "127.0.0.1"
    assert data["from"] == "<s@x>" and data["to"] == ["<r@x>", "<q@x>"]
    assert data["status"] == "REJECTED" and data["milter"] == "inet:127.0.0.1:8891"
    assert data["reason"] == '550 5.7.1 "no" = no'
    assert data["relay"] == "none" and data["size"] == 1234
    assert data["delay"] == 0.35 and data["delays"] == "0.01/0.30/0.04"


def test_logfmt_has_the_same_keys_quoted_where_needed() -> None:
    line = StructuredFormatter(LogFormat.LOGFMT).format(summary_record())
    pairs = logfmt(line)
    assert [k for k, _ in pairs][: len(BASE_KEYS)] == list(BASE_KEYS)
    values = dict(pairs)
    assert values["id"] == CONN_ID and values["event"] == "summary" and values["worker"] == "1"
    assert [v for k, v in pairs if k == "to"] == ["<r@x>", "<q@x>"]
    assert values["reason"] == '550 5.7.1 "no" = no'
    assert 'reason="550 5.7.1 \\"no\\" = no"' in line
    assert values["size"] == "1234" and values["delay"] == "0.35"


def test_a_process_line_has_no_id_and_the_event_log() -> None:
    set_worker(None)
    rec = record("listening on %s", "127.0.0.1:10025")
    data = json.loads(StructuredFormatter(LogFormat.JSON).format(rec))
    assert (data["id"], data["worker"], data["event"]) == (None, None, "log")
    assert data["msg"] == "listening on 127.0.0.1:10025"
    line = StructuredFormatter(LogFormat.LOGFMT).format(rec)
    assert " worker= id= event=log " in line


def test_a_multi_line_message_or_a_traceback_stays_one_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        rec = logging.LogRecord(
            "trio_proxsmtp",
            logging.ERROR,
            __file__,
            1,
            "a\nb\r\tc",
            None,
            sys.exc_info(),
        )
    for fmt in (LogFormat.JSON, LogFormat.LOGFMT):
        line = StructuredFormatter(fmt).format(rec)
        assert "\n" not in line and "\r" not in line
    data = json.loads(StructuredFormatter(LogFormat.JSON).format(rec))
    assert data["msg"].startswith("a\nb\r\tc\nTraceback") and "ValueError: boom" in data["msg"]


def test_the_syslog_form_keeps_the_tag() -> None:
    line = StructuredFormatter(LogFormat.JSON, ident=True).format(summary_record())
    tag = f"proxsmtpd[{os.getpid()}]: "
    assert line.startswith(tag)
    assert json.loads(line[len(tag) :])["event"] == "summary"


def test_text_is_the_summary_line_as_before() -> None:
    rec = summary_record()
    assert TextFormatter(timestamp=False).format(rec) == (
        f"proxsmtpd[{os.getpid()}]: {CONN_ID}: client=192.0.2.7, via=127.0.0.1, from=<s@x>, "
        "to=<r@x>, to=<q@x>, status=REJECTED, milter=inet:127.0.0.1:8891, "
        """reason=550 5.7.1 "no" = no, relay=none, size=1234, delay=0.35, delays=0.01/0.30/0.04"""
    )


def test_the_disconnect_line_and_its_fields() -> None:
    gone = Disconnect("192.0.2.7", {"ehlo": 1, "mail": 1, "rcpt": 2, "quit": 1}, 1.234, "10.0.0.1")
    assert gone.line() == (
        "disconnect from 192.0.2.7 via=10.0.0.1 ehlo=1 mail=1 rcpt=2 quit=1 commands=5 "
        "duration=1.23"
    )
    rec = record(f"{CONN_ID}: %s", gone, conn_id=CONN_ID, **structured("disconnect", gone.fields()))
    data = json.loads(StructuredFormatter(LogFormat.JSON).format(rec))
    assert data["event"] == "disconnect" and data["client"] == "192.0.2.7"
    assert (data["rcpt"], data["commands"], data["duration"]) == (2, 5, 1.23)
    assert Disconnect("", {}, 0.0).line() == "disconnect from (unix) commands=0 duration=0.00"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("json", LogFormat.JSON), ("LOGFMT", LogFormat.LOGFMT), ("text", LogFormat.TEXT)],
)
def test_the_option(tmp_path: object, value: str, expected: LogFormat) -> None:
    path = os.path.join(str(tmp_path), "proxsmtpd.conf")
    with open(path, "w") as f:
        f.write(f"OutAddress: 127.0.0.1:10026\nLogFormat: {value}\n")
    assert load_config(path).log_format is expected


def test_the_default_is_text_and_a_wrong_value_is_refused(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "proxsmtpd.conf")
    with open(path, "w") as f:
        f.write("OutAddress: 127.0.0.1:10026\n")
    assert load_config(path).log_format is LogFormat.TEXT
    with open(path, "w") as f:
        f.write("OutAddress: 127.0.0.1:10026\nLogFormat: yaml\n")
    with pytest.raises(ConfigError, match="LogFormat: invalid value 'yaml'"):
        load_config(path)


def test_syslog_gets_the_record_after_its_tag(tmp_path: Path) -> None:
    path = tmp_path / "log.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as syslog:
        syslog.bind(str(path))
        syslog.settimeout(5)
        setup_logging(None, syslog_address=str(path), log_format=LogFormat.LOGFMT)
        try:
            connection_logger(CONN_ID).info("accepted connection from: %s", "192.0.2.7")
            data = syslog.recv(4096).decode()
        finally:
            setup_logging(3)
    assert data.startswith(f"<22>proxsmtpd[{os.getpid()}]: time=")  # mail.info
    assert data.endswith("\0")
    record = dict(logfmt(data.split(": ", 1)[1].rstrip("\0")))
    assert record["id"] == CONN_ID and record["msg"] == "accepted connection from: 192.0.2.7"
    assert record["level"] == "info" and record["event"] == "log"


def test_a_changed_log_format_waits_for_a_restart() -> None:
    running = parse_config("OutAddress: 127.0.0.1:2525\n")
    new = parse_config("OutAddress: 127.0.0.1:2525\nLogFormat: json\n")
    applied, problems = applicable_reload(running, new, running.workers)
    assert applied is not None and applied.log_format is LogFormat.TEXT
    assert problems == ["LogFormat changed from text to json: a restart is needed to apply it"]
