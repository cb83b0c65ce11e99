"""Logging destinations and levels, timestamps, the ident with pid, and connection ids."""

from __future__ import annotations

import datetime
import itertools
import logging
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from trio_proxsmtp.common.log import (
    ID_PATTERN,
    LOGGER_NAME,
    LoggingUnavailable,
    _TimestampFormatter,
    connection_ids,
    connection_logger,
    logs_to_stderr,
    setup_logging,
)

log = logging.getLogger(LOGGER_NAME)
# -d lines: "2026-11-29T16:55:30.123+01:00 proxsmtpd[PID]: text"
STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d"
STDERR_LINE = re.compile(rf"({STAMP}) proxsmtpd\[(\d+)\]: (.*)")


def texts(err: str) -> list[str]:
    """The messages of stderr lines, checking that each has its timestamp and our pid."""
    out = []
    for line in err.splitlines():
        match = STDERR_LINE.fullmatch(line)
        assert match, line
        assert int(match[2]) == os.getpid()
        out.append(match[3])
    return out


def emit_all_levels() -> None:
    log.debug("a debug line")
    log.info("an info line")
    log.warning("a warning line")
    log.error("an error line")


@pytest.mark.parametrize(
    ("level", "shown"),
    [
        (0, ["an error line"]),
        (1, ["a warning line", "an error line"]),
        (2, ["a warning line", "an error line"]),
        (3, ["an info line", "a warning line", "an error line"]),
        (4, ["a debug line", "an info line", "a warning line", "an error line"]),
    ],
)
def test_debug_levels_go_to_stderr(
    level: int, shown: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging(level)
    emit_all_levels()
    out, err = capsys.readouterr()
    assert out == ""
    assert texts(err) == shown
    assert logs_to_stderr()


def test_setup_twice_does_not_duplicate(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging(1)
    setup_logging(1)
    log.error("once")
    assert texts(capsys.readouterr().err) == ["once"]


def test_bad_level_is_refused() -> None:
    with pytest.raises(ValueError):
        setup_logging(5)


def test_long_messages_are_capped(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging(1)
    log.error("%s", "x" * 5000)
    assert texts(capsys.readouterr().err) == ["x" * 1024]


@pytest.fixture
def syslog_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "log")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    try:
        yield sock, path
    finally:
        sock.close()


def test_daemon_mode_logs_to_syslog_mail(
    syslog_socket: tuple[socket.socket, str], capsys: pytest.CaptureFixture[str]
) -> None:
    sock, path = syslog_socket
    setup_logging(None, syslog_address=path)
    emit_all_levels()
    sock.setblocking(False)
    records = []
    while True:
        try:
            records.append(sock.recv(4096))
        except BlockingIOError:
            break
    # mail = 2; priority = facility * 8 + severity (info 6, warning 4, err 3); no debug.
    ident = f"proxsmtpd[{os.getpid()}]: ".encode()
    assert records == [
        b"<22>" + ident + b"an info line\x00",
        b"<20>" + ident + b"a warning line\x00",
        b"<19>" + ident + b"an error line\x00",
    ]
    assert capsys.readouterr().err == ""
    assert not logs_to_stderr()


def test_daemon_mode_without_syslog_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A detached daemon's stderr is /dev/null: "logging to stderr" would lose every line."""
    missing = str(tmp_path / "no-log")
    with pytest.raises(LoggingUnavailable, match=f"no syslog socket at {missing}.*-d LEVEL"):
        setup_logging(None, syslog_address=missing)
    assert capsys.readouterr().err == ""


def test_connection_logger_prefixes_the_id(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging(3)
    connection_logger(0x100000).info("accepted connection from: %s", "127.0.0.1")
    connection_logger(0x10A3F0).warning("network read operation timed out")
    connection_logger("6933A1B20010920001").info("connected")
    assert texts(capsys.readouterr().err) == [
        "100000: accepted connection from: 127.0.0.1",
        "10A3F0: network read operation timed out",
        "6933A1B20010920001: connected",
    ]


def test_connection_ids_encode_start_time_pid_and_counter() -> None:
    ids = connection_ids(now=0x6933A1B2, pid=0x1092)
    assert list(itertools.islice(ids, 3)) == [
        "6933A1B20010920001",
        "6933A1B20010920002",
        "6933A1B20010920003",
    ]
    many = list(itertools.islice(connection_ids(now=1, pid=1), 0x10001))
    assert len(set(many)) == len(many)
    assert all(re.fullmatch(ID_PATTERN, i) for i in many[-2:])


def test_connection_ids_differ_across_restarts_and_workers() -> None:
    first = set(itertools.islice(connection_ids(now=1000, pid=77), 500))
    restarted = set(itertools.islice(connection_ids(now=1001, pid=77), 500))
    worker = set(itertools.islice(connection_ids(now=1000, pid=78), 500))
    assert not first & restarted and not first & worker
    assert next(connection_ids()).startswith(f"{os.getpid():06X}", 8)


@pytest.mark.parametrize("tz", ["UTC0", "CET-1CEST,M3.5.0,M10.5.0/3", "NST+3:30"])
def test_stderr_timestamp_is_the_record_time_in_local_time_with_offset(
    tz: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TZ", tz)
    time.tzset()
    try:
        for created in (1_780_000_000.25, 1_795_000_000.5):  # one in summer, one in winter
            record = logging.LogRecord(LOGGER_NAME, logging.INFO, __file__, 1, "x", None, None)
            record.created, record.msecs = created, (created % 1) * 1000
            expected = datetime.datetime.fromtimestamp(created).astimezone()
            stamp = _TimestampFormatter().formatTime(record)
            assert stamp == expected.isoformat(timespec="milliseconds")
    finally:
        monkeypatch.undo()
        time.tzset()
