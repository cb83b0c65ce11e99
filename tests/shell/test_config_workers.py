"""The `Workers` option (extension): `auto` (the default), its range, its limit by
MaxConnections, and -t."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from trio_proxsmtp.config.loader import parse_config
from trio_proxsmtp.config.model import MAX_WORKERS, Config, ConfigError, auto_workers
from trio_proxsmtp.daemon import cli

BASE = "OutAddress: 127.0.0.1:2525\n"
EXAMPLE = Path(__file__).resolve().parents[2] / "proxsmtpd.conf.example"


@pytest.fixture
def cores(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    """Pretend this process may run on `n` cores."""

    def set_cores(n: int) -> None:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(n)))

    return set_cores


@pytest.mark.parametrize(("n", "expected"), [(1, 1), (2, 2), (12, 12), (200, MAX_WORKERS)])
def test_default_is_one_worker_per_core(
    cores: Callable[[int], None], n: int, expected: int
) -> None:
    cores(n)
    assert parse_config(BASE).workers == expected
    assert parse_config(f"{BASE}Workers: auto\n").workers == expected
    assert parse_config(f"{BASE}Workers: 1\nWorkers: AUTO\n").workers == expected  # last wins
    assert Config().workers == expected  # a Config built in code has the same default


def test_auto_is_capped_by_max_connections(cores: Callable[[int], None]) -> None:
    cores(8)
    assert parse_config(f"{BASE}MaxConnections: 3\n").workers == 3
    assert parse_config(f"{BASE}Workers: auto\nMaxConnections: 1\n").workers == 1
    assert Config(max_connections=5).workers == 5
    assert auto_workers(100) == 8


def test_auto_follows_the_affinity_not_the_machine(cores: Callable[[int], None]) -> None:
    cores(1)  # e.g. taskset -c 0 on a larger machine: one process, serving directly
    assert parse_config(BASE).workers == 1


def test_one_stays_available(cores: Callable[[int], None]) -> None:
    cores(8)
    assert parse_config(f"{BASE}Workers: 1\n").workers == 1


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
        ("automatic", "or 'auto'"),
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
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cores: Callable[[int], None]
) -> None:
    path = tmp_path / "proxsmtpd.conf"
    path.write_text(f"{BASE}MaxConnections: 1\nWorkers: 2\n")
    assert cli.main(["-t", "-f", str(path)]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"proxsmtpd: {path}:3: Workers: 2 workers but MaxConnections is 1")
    path.write_text(f"{BASE}MaxConnections: 2\nWorkers: 2\n")
    assert cli.main(["-t", "-f", str(path)]) == 0
    cores(4)  # auto never asks for more workers than MaxConnections allows
    path.write_text(f"{BASE}MaxConnections: 1\nWorkers: auto\n")
    assert cli.main(["-t", "-f", str(path)]) == 0


def test_example_documents_the_per_worker_limit() -> None:
    text = EXAMPLE.read_text()
    assert "#Workers: auto" in text
    assert "share" in text.split("#Workers: auto")[0].rsplit("ShutdownTimeout", 1)[1]
