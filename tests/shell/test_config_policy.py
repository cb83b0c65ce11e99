"""PolicyService, PolicyDefaultAction, PolicyTimeout (issue 23): parsed, validated with
file/line/option, defaults, and the settings the relay gets."""

from __future__ import annotations

import pytest

from trio_proxsmtp.config.loader import parse_config
from trio_proxsmtp.config.model import ConfigError
from trio_proxsmtp.config.settings import policy_settings, relay_settings
from trio_proxsmtp.stages.settings import MilterAddress, PolicyDefaultAction, PolicySettings

BASE = "OutAddress: 127.0.0.1:2525\n"


def test_off_by_default() -> None:
    config = parse_config(BASE, "test.conf")
    assert policy_settings(config) is None
    settings = relay_settings(config)
    assert settings.policy_service is None and not settings.policy.policy_service


@pytest.mark.parametrize(
    ("value", "address"),
    [
        ("inet:127.0.0.1:10023", MilterAddress("inet:127.0.0.1:10023", "127.0.0.1", 10023)),
        ("inet:[::1]:10023", MilterAddress("inet:[::1]:10023", "::1", 10023)),
        ("INET:pol.example:9998", MilterAddress("INET:pol.example:9998", "pol.example", 9998)),
        ("unix:/run/pg.sock", MilterAddress("unix:/run/pg.sock", path="/run/pg.sock")),
    ],
)  # fmt: skip
def test_addresses(value: str, address: MilterAddress) -> None:
    config = parse_config(
        BASE + f"PolicyService: {value}\npolicydefaultaction: DUNNO\nPolicyTimeout: 5\n"
    )
    assert policy_settings(config) == PolicySettings(address, PolicyDefaultAction.DUNNO, 5.0)
    settings = relay_settings(config)
    assert settings.policy_service is not None and settings.policy.policy_service


def test_defaults_when_set() -> None:
    config = parse_config(BASE + "PolicyService: inet:127.0.0.1:10023\n")
    settings = policy_settings(config)
    assert settings is not None
    assert (settings.default_action, settings.timeout) == (PolicyDefaultAction.TEMPFAIL, 100.0)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("PolicyService: 127.0.0.1:10023", "expected inet:host:port or unix:/path"),
        ("PolicyService: tcp:127.0.0.1:10023", "expected inet:host:port or unix:/path"),
        ("PolicyService: inet:127.0.0.1", "expected inet:host:port"),
        ("PolicyService: inet:127.0.0.1:0", "invalid port"),
        ("PolicyService: inet:::1:25", "IPv6 host in brackets"),
        ("PolicyService: unix:run/x.sock", "must be absolute"),
        ("PolicyService: inet:a:1 inet:b:2", "expected inet:host:port or unix:/path"),
        ("PolicyDefaultAction: reject", "must be 'tempfail' or 'dunno'"),
        ("PolicyTimeout: 0", "must be between 1"),
    ],
)
def test_bad_values_name_file_line_and_option(line: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(BASE + line + "\n", "test.conf")
    error = caught.value
    assert (error.path, error.line, error.option) == ("test.conf", 2, line.split(":")[0])
    assert message in error.message
