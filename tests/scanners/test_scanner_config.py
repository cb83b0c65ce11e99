"""The options of the scanners and FilterType: smtp (docs/behaviour.md §11.16, §11.17): their
parsing, their errors (FILE:LINE: OPTION: reason), the settings built, the -t warnings."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from trio_proxsmtp.config.loader import parse_config, parse_config_with_warnings
from trio_proxsmtp.config.model import ConfigError
from trio_proxsmtp.config.settings import relay_settings, session_policy
from trio_proxsmtp.stages.settings import (
    FilterType,
    ScannerDefaultAction,
    ScannerKind,
    ScannerSettings,
)

BASE = "OutAddress: 127.0.0.1:2525\nTempDirectory: /tmp\n"


def test_every_option_reaches_the_settings() -> None:
    config = parse_config(
        BASE
        + "Scanners: spamd:inet:127.0.0.1:783, clamd:unix:/run/clamav/clamd.ctl\n"
        + "SpamdRejectScore: 7.5\nSpamdUser: amavis\nSpamdMaxSize: 1000000\n"
        + "ScannerDefaultAction: accept\nScannerConnectTimeout: 3\nScannerTimeout: 40\n"
    )
    scanners = relay_settings(config).transaction.scanners
    assert scanners is not None
    assert [
        (s.kind, s.address.host, s.address.port, s.address.path) for s in scanners.scanners
    ] == [
        (ScannerKind.SPAMD, "127.0.0.1", 783, None),
        (ScannerKind.CLAMD, None, 0, "/run/clamav/clamd.ctl"),
    ]
    assert (
        scanners.spamd_reject_score,
        scanners.spamd_user,
        scanners.spamd_max_size,
        scanners.default_action,
        scanners.connect_timeout,
        scanners.timeout,
    ) == (7.5, "amavis", 1000000, ScannerDefaultAction.ACCEPT, 3.0, 40.0)
    assert session_policy(config).filtering  # the scanners run in the filter stage


def test_defaults() -> None:
    config = parse_config(BASE + "Scanners: clamd:inet:[::1]:3310\n")
    scanners = relay_settings(config).transaction.scanners
    assert scanners is not None
    assert attrs_without_scanners(scanners) == attrs_without_scanners(ScannerSettings())
    assert scanners.spamd_reject_score is None and scanners.spamd_max_size == 512000
    assert relay_settings(parse_config(BASE)).transaction.scanners is None
    assert not session_policy(parse_config(BASE)).filtering


def attrs_without_scanners(settings: ScannerSettings) -> tuple[object, ...]:
    return (settings.spamd_reject_score, settings.default_action, settings.timeout)


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("Scanners: spamassassin:inet:127.0.0.1:783", "unknown scanner 'spamassassin'"),
        ("Scanners: spamd", "expected spamd:inet:HOST:PORT"),
        ("Scanners: clamd:tcp:127.0.0.1:3310", "unknown milter socket type"),
        ("Scanners: clamd:inet:127.0.0.1", "a port is required"),
        ("Scanners: clamd:unix:relative.sock", "must be absolute"),
        ("Scanners:", "no scanner given"),
        ("SpamdRejectScore: lots", "not a score"),
        ("SpamdUser: two words", "invalid user name"),
        ("SpamdMaxSize: 0", "must be between 1"),
        ("ScannerDefaultAction: reject", "must be 'tempfail' or 'accept'"),
        ("ScannerTimeout: 0", "must be between 1"),
        ("ScannerConnectTimeout: soon", "not a decimal integer"),
        ("FilterType: smtp\nFilterCommand: not an address", "FilterType: smtp takes"),
    ],
)
def test_errors_name_the_option_and_the_reason(line: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        parse_config(BASE + line + "\n")


def test_spamd_reject_score_off_and_negative() -> None:
    off = parse_config(BASE + "SpamdRejectScore: off\n")
    assert off.spamd_reject_score is None
    assert parse_config(BASE + "SpamdRejectScore: -1\n").spamd_reject_score == -1.0


def test_t_warns_about_a_missing_unix_socket_only(tmp_path: Path) -> None:
    sock_path = tmp_path / "clamd.sock"
    listener = socket.socket(socket.AF_UNIX)
    try:
        listener.bind(str(sock_path))
        present = f"Scanners: clamd:unix:{sock_path}, spamd:unix:{tmp_path}/gone.sock\n"
        _, warnings = parse_config_with_warnings(BASE + present)
    finally:
        listener.close()
    assert warnings == [
        f"Scanners: spamd:unix:{tmp_path}/gone.sock: {tmp_path}/gone.sock: "
        "No such file or directory (is it running?)"
    ]


def test_filter_type_smtp_takes_an_address_not_a_program(tmp_path: Path) -> None:
    config, warnings = parse_config_with_warnings(
        BASE + "FilterType: smtp\nFilterCommand: 127.0.0.1:10025\n"
    )
    assert config.filter_type is FilterType.SMTP and warnings == []
    spec = relay_settings(config).transaction.filter
    assert spec is not None and spec.command == "127.0.0.1:10025"
    _, warnings = parse_config_with_warnings(
        BASE + f"FilterType: smtp\nFilterCommand: {tmp_path}/filter.sock\n"
    )
    assert warnings == [
        f"FilterCommand: {tmp_path}/filter.sock: No such file or directory "
        "(is the filter server running?)"
    ]
    parse_config(BASE + "FilterType: smtp\nFilterCommand: [::1]:10025\n")


def test_t_warns_when_scanner_timeout_passes_message_timeout() -> None:
    scanners = "Scanners: clamd:inet:127.0.0.1:3310\n"
    _, quiet = parse_config_with_warnings(BASE + scanners + "ScannerTimeout: 80\n")
    assert quiet == []
    _, warnings = parse_config_with_warnings(BASE + scanners + "ScannerTimeout: 100\n")
    assert len(warnings) == 1
    assert warnings[0].startswith("ScannerTimeout 100 = 100 s exceeds MessageTimeOut 90")
