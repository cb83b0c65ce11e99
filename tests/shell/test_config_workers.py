"""The `Workers` option (extension): its range, its limit by MaxConnections, and -t."""

from __future__ import annotations

from pathlib import Path

import pytest

from trio_proxsmtp import cli
from trio_proxsmtp.config import ConfigError, parse_config

BASE = "OutAddress: 127.0.0.1:2525\n"
EXAMPLE = Path(__file__).resolve().parents[2] / "proxsmtpd.conf.example"


def test_default_is_one() -> None:
    assert parse_config(BASE).workers == 1


@pytest.mark.parametrize(("value", "expected"), [("1", 1), ("2", 2), ("64", 64)])
def test_values(value: str, expected: int) -> None:
    assert parse_config(f"{BASE}workers: {value}\n").workers == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "between 1 and 64"),
        ("65", "between 1 and 64"),
        ("-1", "not a decimal integer"),
        ("two", "not a decimal integer"),
        ("", "not a decimal integer"),
    ],
)
def test_bad_values(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(f"{BASE}Workers: {value}\n", "w.conf")
    assert (info.value.line, info.value.option) == (2, "Workers")
    assert message in info.value.message


def test_more_workers_than_max_connections_is_an_error() -> None:
    assert parse_config(f"{BASE}Workers: 3\nMaxConnections: 3\n").workers == 3
    with pytest.raises(ConfigError) as info:
        parse_config(f"{BASE}Workers: 4\n# the limit\nMaxConnections: 3\n", "w.conf")
    assert (info.value.path, info.value.line, info.value.option) == ("w.conf", 2, "Workers")
    assert "MaxConnections is 3" in info.value.message
    # The default MaxConnections (64) allows the largest Workers.
    assert parse_config(f"{BASE}Workers: 64\n").max_connections == 64


def test_check_mode_reports_it_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "proxsmtpd.conf"
    path.write_text(f"{BASE}MaxConnections: 1\nWorkers: 2\n")
    assert cli.main(["-t", "-f", str(path)]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"proxsmtpd: {path}:3: Workers: 2 workers but MaxConnections is 1")
    path.write_text(f"{BASE}MaxConnections: 2\nWorkers: 2\n")
    assert cli.main(["-t", "-f", str(path)]) == 0


def test_example_documents_the_per_worker_limit() -> None:
    text = EXAMPLE.read_text()
    assert "#Workers: 1" in text
    assert "share" in text.split("#Workers: 1")[0].rsplit("ShutdownTimeout", 1)[1]
