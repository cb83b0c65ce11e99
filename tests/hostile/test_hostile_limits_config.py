"""The options that bound hostile clients (issue 16): parsed, validated, defaulted.

The relay enforces them (MaxRecipients, MaxConnectionsPerClient, HardErrorLimit and the
deadlines); here: the values, the defaults and the errors `-t` reports.
"""

from __future__ import annotations

import ipaddress

import pytest

from trio_proxsmtp.config.loader import parse_config, parse_config_with_warnings
from trio_proxsmtp.config.model import ConfigError

BASE = "OutAddress: 127.0.0.1:2525\n"


def test_defaults() -> None:
    config = parse_config(BASE)
    assert config.max_recipients == 1000  # Postfix's smtpd_recipient_limit
    assert config.max_connections_per_client is None
    assert config.per_client_limit == 32  # half of MaxConnections 64
    assert config.connection_limit_exceptions == (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    assert config.hard_error_limit == 20  # Postfix's smtpd_hard_error_limit
    assert (config.command_timeout, config.reply_timeout) == (180.0, 180.0)
    assert config.min_data_rate == 500  # Postfix's smtpd_min_data_rate
    assert (config.session_timeout, config.stress_timeout) == (3600.0, 10.0)


def test_values() -> None:
    config = parse_config(
        BASE
        + "MaxRecipients: 50\nMaxConnectionsPerClient: 0\nHardErrorLimit: 0\n"
        + "ConnectionLimitExceptions: 10.0.0.0/8, [2001:db8::]/32 ,192.0.2.1\n"
        + "CommandTimeOut: 60\nReplyTimeOut: 90\nMinDataRate: 0\n"
        + "SessionTimeOut: 0\nStressTimeOut: 0\n"
    )
    assert config.max_recipients == 50
    assert config.per_client_limit == 0  # no limit
    assert config.hard_error_limit == 0
    assert [str(n) for n in config.connection_limit_exceptions] == [
        "10.0.0.0/8",
        "2001:db8::/32",
        "192.0.2.1/32",
    ]
    assert (config.command_timeout, config.reply_timeout, config.min_data_rate) == (60, 90, 0)
    assert (config.session_timeout, config.stress_timeout) == (0, 0)


def test_derived_per_client_limit_follows_max_connections() -> None:
    assert parse_config(BASE + "MaxConnections: 10\n").per_client_limit == 5
    assert parse_config(BASE + "MaxConnections: 1\n").per_client_limit == 1
    assert parse_config(BASE + "MaxConnectionsPerClient: 3\n").per_client_limit == 3


def test_none_means_no_exceptions() -> None:
    config = parse_config(BASE + "ConnectionLimitExceptions: None\n")
    assert config.connection_limit_exceptions == ()
    assert config.connection_limit_applies("127.0.0.1")


@pytest.mark.parametrize(
    ("client", "applies"),
    [
        ("127.0.0.1", False),
        ("127.3.4.5", False),
        ("::1", False),
        ("::ffff:127.0.0.1", False),  # a v4 client on a dual-stack socket
        ("192.0.2.7", True),
        ("2001:db8::1", True),
        ("fe80::1%eth0", True),
        ("", False),  # a unix socket client has no address to count
    ],
)
def test_connection_limit_applies(client: str, applies: bool) -> None:
    assert parse_config(BASE).connection_limit_applies(client) is applies


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("MaxRecipients: 0", "must be between 1 and"),
        ("MaxRecipients: many", "not a decimal integer"),
        ("MaxConnectionsPerClient: -1", "not a decimal integer"),
        ("ConnectionLimitExceptions: 10.0.0.0/33", "invalid network '10.0.0.0/33'"),
        ("ConnectionLimitExceptions: 10.0.0.0/8,", "empty network"),
        ("ConnectionLimitExceptions:", "empty network"),
        ("HardErrorLimit: x", "not a decimal integer"),
        ("CommandTimeOut: 0", "must be between 1 and"),
        ("ReplyTimeOut: 0", "must be between 1 and"),
        ("MinDataRate: 1.5", "not a decimal integer"),
        ("SessionTimeOut: -1", "not a decimal integer"),
        ("StressTimeOut: soon", "not a decimal integer"),
    ],
)
def test_errors_name_file_line_and_option(line: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(BASE + line + "\n", "p.conf")
    error = caught.value
    assert (error.path, error.line, error.option) == ("p.conf", 2, line.split(":")[0])
    assert message in error.message


def test_per_client_limit_not_below_max_connections_warns() -> None:
    _, warnings = parse_config_with_warnings(
        BASE + "MaxConnections: 8\nMaxConnectionsPerClient: 8\n"
    )
    assert any("one client address can take every connection" in w for w in warnings)
    _, warnings = parse_config_with_warnings(BASE + "MaxConnections: 1\n")
    assert not any("MaxConnectionsPerClient" in w for w in warnings)


def test_a_per_client_limit_below_workers_is_no_longer_warned_about() -> None:
    # The workers count in one table (daemon/client_table.py): the limit is exact.
    for text in ("Workers: 3\nMaxConnectionsPerClient: 2\n", "Workers: 3\n"):
        _, warnings = parse_config_with_warnings(BASE + text)
        assert not any("less than Workers" in w for w in warnings)
