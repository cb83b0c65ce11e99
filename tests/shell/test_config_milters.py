"""The milter options: parsed, validated with file/line/option, defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from trio_proxsmtp.config.loader import parse_config
from trio_proxsmtp.config.model import ConfigError
from trio_proxsmtp.config.settings import milter_settings
from trio_proxsmtp.daemon import cli
from trio_proxsmtp.stages.settings import DefaultAction, MilterAddress, MilterSettings

BASE = "OutAddress: 127.0.0.1:2525\n"


def test_milter_defaults() -> None:
    config = parse_config(BASE, "test.conf")
    settings = milter_settings(config)
    assert settings == MilterSettings()
    assert settings.milters == ()
    assert settings.default_action is DefaultAction.TEMPFAIL
    assert (settings.connect_timeout, settings.command_timeout, settings.content_timeout) == (
        30.0,
        30.0,
        300.0,
    )


def test_milter_options() -> None:
    config = parse_config(
        BASE
        + "Milters: inet:127.0.0.1:8891, unix:/run/milter.sock\n"
        + "milterdefaultaction: Accept\n"
        + "MilterConnectTimeout: 5\nMilterCommandTimeout: 7\nMilterContentTimeout: 60\n",
        "test.conf",
    )
    assert config.milters == (
        MilterAddress("inet:127.0.0.1:8891", host="127.0.0.1", port=8891),
        MilterAddress("unix:/run/milter.sock", path="/run/milter.sock"),
    )
    settings = milter_settings(config)
    assert settings.default_action is DefaultAction.ACCEPT
    assert (settings.connect_timeout, settings.command_timeout, settings.content_timeout) == (
        5.0,
        7.0,
        60.0,
    )
    assert parse_config(BASE + "Milters:\n").milters == ()


@pytest.mark.parametrize(
    ("line", "option", "message"),
    [
        ("Milters: 127.0.0.1:8891", "Milters", "unknown milter socket type"),
        ("Milters: inet", "Milters", "inet:host:port or unix:/path"),
        ("Milters: inet:127.0.0.1", "Milters", "a port is required"),
        ("Milters: inet:127.0.0.1:0", "Milters", "invalid port"),
        ("Milters: unix:run/milter.sock", "Milters", "must be absolute"),
        ("Milters: smtp:127.0.0.1:25", "Milters", "unknown milter socket type"),
        ("MilterDefaultAction: discard", "MilterDefaultAction", "'tempfail', 'accept'"),
        ("MilterConnectTimeout: 0", "MilterConnectTimeout", "between 1 and"),
        ("MilterCommandTimeout: 1.5", "MilterCommandTimeout", "not a decimal integer"),
        ("MilterContentTimeout: -1", "MilterContentTimeout", "not a decimal integer"),
    ],
)
def test_milter_option_errors(line: str, option: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(BASE + line + "\n", "test.conf")
    assert (info.value.path, info.value.line, info.value.option) == ("test.conf", 2, option)
    assert message in info.value.message


def test_check_flag_reports_a_bad_milter_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "proxsmtpd.conf"
    path.write_text(BASE + "Milters: inet:127.0.0.1:8891\nMilterDefaultAction: maybe\n")
    assert cli.main(["-t", "-f", str(path)]) == 2
    assert capsys.readouterr().err == (
        f"proxsmtpd: {path}:3: MilterDefaultAction: invalid value 'maybe' "
        "(must be 'tempfail', 'accept' or 'reject')\n"
    )
    path.write_text(BASE + "Milters: inet:127.0.0.1:8891, unix:/run/m.sock\n")
    assert cli.main(["-t", "-f", str(path)]) == 0
