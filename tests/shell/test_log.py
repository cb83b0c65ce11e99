"""Logging destinations and levels (spec §12.1, §2) and connection ids."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from trio_proxsmtp.log import LOGGER_NAME, connection_logger, logs_to_stderr, setup_logging

log = logging.getLogger(LOGGER_NAME)


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
    assert err.splitlines() == [f"proxsmtpd: {line}" for line in shown]
    assert logs_to_stderr()


def test_setup_twice_does_not_duplicate(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging(1)
    setup_logging(1)
    log.error("once")
    assert capsys.readouterr().err == "proxsmtpd: once\n"


def test_bad_level_is_refused() -> None:
    with pytest.raises(ValueError):
        setup_logging(5)


def test_long_messages_are_capped(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging(1)
    log.error("%s", "x" * 5000)
    assert capsys.readouterr().err == "proxsmtpd: " + "x" * 1024 + "\n"


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
    assert records == [
        b"<22>proxsmtpd: an info line\x00",
        b"<20>proxsmtpd: a warning line\x00",
        b"<19>proxsmtpd: an error line\x00",
    ]
    assert capsys.readouterr().err == ""
    assert not logs_to_stderr()


def test_daemon_mode_without_syslog_falls_back_to_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = str(tmp_path / "no-log")
    setup_logging(None, syslog_address=missing)
    emit_all_levels()
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith(f"proxsmtpd: no syslog socket at {missing}")
    assert lines[0].endswith("logging to stderr")
    assert lines[1:] == [
        "proxsmtpd: an info line",
        "proxsmtpd: a warning line",
        "proxsmtpd: an error line",
    ]
    assert logs_to_stderr()


def test_connection_logger_prefixes_the_id(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging(3)
    connection_logger(0x100000).info("accepted connection from: %s", "127.0.0.1")
    connection_logger(0x10A3F0).warning("network read operation timed out")
    assert capsys.readouterr().err.splitlines() == [
        "proxsmtpd: 100000: accepted connection from: 127.0.0.1",
        "proxsmtpd: 10A3F0: network read operation timed out",
    ]
