"""The command line in-process: flags, usage errors, config errors and the start-up path
up to serve, with the server replaced (no fork: these paths stop before detaching or use -d).
"""

from __future__ import annotations

import errno
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from trio_proxsmtp import __version__, compiled_core
from trio_proxsmtp.config.model import Config
from trio_proxsmtp.daemon import cli, listeners, signals, startup


def write_conf(tmp_path: Path, extra: str = "") -> str:
    path = tmp_path / "proxsmtpd.conf"
    # One process: these tests run cli.main in the test runner against a fake server, which
    # `Workers: auto` would fork (the supervisor path is tested in tests/ops).
    # Last, so that the line numbers of `extra` stay those the tests expect.
    path.write_text(f"Listen: 127.0.0.1:2525\nOutAddress: 127.0.0.1:2526\n{extra}\nWorkers: 1\n")
    return str(path)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["-v", "-f", "/some/where.conf"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        f"trio_proxsmtp (version {__version__}) - proxsmtpd 1.10 compatible",
        "          (config: /some/where.conf)",
        f"          (core: {compiled_core.describe()})",
    ]
    assert err == ""


def test_version_shows_default_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["-v"]) == 0
    assert "(config: /etc/proxsmtpd.conf)" in capsys.readouterr().out


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([flag]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("usage: proxsmtpd [-d level] [-f configfile] [-p pidfile]")
    assert err == ""


@pytest.mark.parametrize(
    ("argv", "first_line"),
    [
        (["-x"], "proxsmtpd: option -x not recognized"),
        (["--bogus"], "proxsmtpd: option --bogus not recognized"),
        (["-f"], "proxsmtpd: option -f requires argument"),
        (["extra"], "proxsmtpd: unexpected argument: extra"),
        (["-d", "1", "extra"], "proxsmtpd: unexpected argument: extra"),
    ],
)
def test_usage_errors(argv: list[str], first_line: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert lines[0] == first_line
    assert lines[1].startswith("usage: proxsmtpd")


@pytest.mark.parametrize("value", ["5", "-1", "abc", "4x", "", "\u0663"])
def test_bad_debug_level(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["-d", value, "-v"]) == 2
    assert capsys.readouterr().err == (
        "proxsmtpd: invalid debug log level (must be between 0 and 4)\n"
    )


def test_check_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_conf(tmp_path)
    assert cli.main(["-t", "-f", path]) == 0
    assert capsys.readouterr().out == f"config OK: {path}\n"


def test_check_prints_warnings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # World-writable without the sticky bit: a warning (a missing one is an error now).
    (tmp_path / "open").mkdir()
    (tmp_path / "open").chmod(0o777)
    path = write_conf(tmp_path, f"TempDirectory: {tmp_path}/open\n")
    assert cli.main(["-t", "-f", path]) == 0
    out, err = capsys.readouterr()
    assert out == f"config OK: {path}\n"
    assert err.startswith("proxsmtpd: warning: TempDirectory")


@pytest.mark.parametrize("check", [True, False])
def test_config_error_one_line_exit_2(
    tmp_path: Path, check: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_conf(tmp_path, "MaxConnections: 0\n")
    assert cli.main((["-t"] if check else ["-d", "4"]) + ["-f", path]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (f"proxsmtpd: {path}:3: MaxConnections: must be between 1 and 10239: 0\n")


@pytest.mark.parametrize("check", [True, False])
def test_missing_filter_program_stops_check_and_start(
    tmp_path: Path, check: bool, fake: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_conf(tmp_path, "FilterCommand: /usr/local/bin/nonexistent-filter\n")
    assert cli.main((["-t"] if check else ["-d", "3"]) + ["-f", path]) == 2
    assert fake.served == []
    assert capsys.readouterr().err == (
        f"proxsmtpd: {path}:3: FilterCommand: /usr/local/bin/nonexistent-filter: "
        "No such file or directory\n"
    )


def test_unknown_user_names_its_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_conf(tmp_path, "User: nobody\n# User: root\nuser : no-such-user-here\n")
    assert cli.main(["-t", "-f", path]) == 2
    assert cli.main(["-d", "0", "-f", path]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [f"proxsmtpd: {path}:5: User: couldn't look up user: no-such-user-here"] * 2


class FakeServer:
    """Stands in for server.bind_listeners/serve and records what cli gave them."""

    def __init__(self, bind_error: OSError | None = None) -> None:
        self.bind_error = bind_error
        self.bound: list[Config] = []
        self.served: list[dict[str, Any]] = []
        self.sockets: list[socket.socket] = []
        self.pid_paths: list[Path] = []  # pid files whose content serve() records

    def bind_listeners(self, config: Config) -> list[socket.socket]:
        self.bound.append(config)
        if self.bind_error is not None:
            raise self.bind_error
        sock = socket.socket()
        self.sockets.append(sock)
        return [sock]

    async def serve(
        self,
        config: Config,
        sockets: list[socket.socket],
        *,
        reload: Any = None,
        task_status: Any = trio.TASK_STATUS_IGNORED,
    ) -> None:
        present = {str(p): p.read_text() for p in self.pid_paths if p.exists()}
        self.served.append(
            {"config": config, "sockets": sockets, "reload": reload, "pid_files": present}
        )


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeServer]:
    fake = FakeServer()
    monkeypatch.setattr(listeners, "bind_listeners", fake.bind_listeners, raising=False)
    monkeypatch.setattr(signals, "serve", fake.serve, raising=False)
    yield fake
    for sock in fake.sockets:
        sock.close()


def test_foreground_start_writes_and_removes_pid_file(
    tmp_path: Path, fake: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_conf(tmp_path, "TimeOut: 7\n")
    pid_file = tmp_path / "p.pid"
    fake.pid_paths.append(pid_file)
    assert cli.main(["-d", "0", "-f", path, "-p", str(pid_file)]) == 0
    assert fake.bound[0].timeout == 7.0
    (served,) = fake.served
    assert served["config"] is fake.bound[0]
    assert served["sockets"] == fake.sockets
    assert served["pid_files"] == {str(pid_file): f"{os.getpid()}\n"}
    assert not pid_file.exists()
    # the reload callable re-reads the file
    Path(path).write_text(Path(path).read_text() + "TimeOut: 8\n")
    assert served["reload"]().timeout == 8.0


def test_pid_file_option_overrides_command_line(
    tmp_path: Path,
    fake: FakeServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from_conf, from_cli = tmp_path / "conf.pid", tmp_path / "cli.pid"
    path = write_conf(tmp_path, f"PidFile: {from_conf}\n")
    fake.pid_paths += [from_conf, from_cli]
    assert cli.main(["-d", "1", "-f", path, "-p", str(from_cli)]) == 0
    assert fake.served[0]["pid_files"] == {str(from_conf): f"{os.getpid()}\n"}
    ident = f"proxsmtpd[{os.getpid()}]: "
    assert f"{ident}ignoring pid file specified on the command line" in capsys.readouterr().err


def test_empty_pid_file_option_disables_it(
    tmp_path: Path, fake: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from_cli = tmp_path / "cli.pid"
    path = write_conf(tmp_path, "PidFile:\n")
    fake.pid_paths.append(from_cli)
    assert cli.main(["-d", "0", "-f", path, "-p", str(from_cli)]) == 0
    assert fake.served[0]["pid_files"] == {}


def test_pid_file_failure_is_an_error(
    tmp_path: Path, fake: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_conf(tmp_path)
    bad = tmp_path / "missing-dir" / "p.pid"
    assert cli.main(["-d", "0", "-f", path, "-p", str(bad)]) == 1
    assert fake.served == []
    (line,) = capsys.readouterr().err.splitlines()  # logged (-d): timestamp, ident
    assert line.endswith(
        f" proxsmtpd[{os.getpid()}]: couldn't write pid file: {bad}: No such file or directory"
    )


def test_pid_file_of_another_process_is_left_alone(tmp_path: Path) -> None:
    pid_file = tmp_path / "p.pid"
    pid_file.write_text("1\n")
    startup.remove_pid_file(str(pid_file))
    assert pid_file.read_text() == "1\n"
    startup.write_pid_file(str(pid_file))
    assert pid_file.read_text() == f"{os.getpid()}\n"
    startup.remove_pid_file(str(pid_file))
    assert not pid_file.exists()


@pytest.mark.parametrize("argv", [["-d", "0"], []])
def test_bind_failure_exits_1_before_detaching(
    tmp_path: Path,
    fake: FakeServer,
    argv: list[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    syslog = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    syslog.bind(str(tmp_path / "syslog"))
    monkeypatch.setenv("PROXSMTPD_SYSLOG_SOCKET", str(tmp_path / "syslog"))
    fake.bind_error = OSError(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE))
    path = write_conf(tmp_path)
    pid_file = tmp_path / "p.pid"
    assert cli.main([*argv, "-f", path, "-p", str(pid_file)]) == 1
    assert fake.served == []
    assert not pid_file.exists()
    syslog.close()
    err = capsys.readouterr().err.splitlines()
    assert err[-1].endswith(
        "proxsmtpd: couldn't bind to address: 127.0.0.1:2525: Address already in use"
        if argv == []  # daemon mode: syslog has it, the shell gets it once
        else f" proxsmtpd[{os.getpid()}]: couldn't bind to address: 127.0.0.1:2525: "
        "Address already in use"
    )
    assert sum("couldn't bind" in line for line in err) == 1


def test_running_as_root_warns(
    tmp_path: Path, fake: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_conf(tmp_path)
    assert cli.main(["-d", "1", "-f", path]) == 0
    warned = "]: running as root is NOT recommended" in capsys.readouterr().err
    assert warned is (os.geteuid() == 0)


def test_a_failed_start_leaves_the_signal_mask_as_it_was(
    tmp_path: Path, fake: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    # Start-up blocks SIGTERM/SIGINT/SIGHUP until serve() listens for them; a start-up
    # error must unblock them again, or every process started later by the same process
    # (a test run's subprocesses) inherits SIGTERM blocked and never stops on it.
    fake.bind_error = OSError(errno.EADDRINUSE, "Address already in use")
    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    assert cli.main(["-d", "0", "-f", write_conf(tmp_path)]) == 1
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == before
    assert "couldn't bind" in capsys.readouterr().err
