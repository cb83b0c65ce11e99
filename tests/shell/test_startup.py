"""The start-up path in real processes: one-line errors, daemonising, pid file, User.

Most tests run `fake_server_main.py`, which is cli.main with a stand-in server, so they
test the shell alone; the last ones run the real `python -m trio_proxsmtp` once
server.bind_listeners and server.serve exist.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
FAKE = [sys.executable, str(HERE / "fake_server_main.py")]
REAL = [sys.executable, "-m", "trio_proxsmtp"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
DEADLINE = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_conf(tmp_path: Path, port: int, extra: str = "") -> str:
    path = tmp_path / "proxsmtpd.conf"
    path.write_text(f"Listen: 127.0.0.1:{port}\nOutAddress: 127.0.0.1:{free_port()}\n{extra}")
    return str(path)


def run(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        env=ENV if env is None else env,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        cwd=ROOT,
        check=False,
    )


def processes_using(marker: str) -> list[int]:
    """Live processes whose command line mentions marker (our unique config path)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def wait_until(predicate: object, what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def status_fields(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


@pytest.fixture(autouse=True)
def syslog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A syslog socket for daemon mode (the test machine may have no /dev/log)."""
    path = str(tmp_path / "syslog.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        monkeypatch.setitem(ENV, "PROXSMTPD_SYSLOG_SOCKET", path)
        yield sock


def syslog_lines(sock: socket.socket, until: str) -> list[str]:
    """The syslog records received, up to one containing `until`."""
    sock.settimeout(DEADLINE)
    lines = []
    while not lines or until not in lines[-1]:
        lines.append(sock.recv(4096).decode())
    return lines


@pytest.fixture
def cleanup() -> Iterator[list[str]]:
    """Config paths whose processes are SIGKILLed at the end if a test failed half way."""
    markers: list[str] = []
    yield markers
    for marker in markers:
        for pid in processes_using(marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("command", [FAKE, REAL])
def test_config_error_is_one_line_exit_2(command: list[str], tmp_path: Path) -> None:
    path = write_conf(tmp_path, free_port(), "FilterType: stream\n")
    result = run([*command, "-f", path])
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        f"proxsmtpd: {path}:3: FilterType: invalid value 'stream' "
        "(must be 'pipe', 'file', 'reject' or 'smtp')\n"
    )


@pytest.mark.parametrize("command", [FAKE, REAL])
def test_missing_config_is_one_line_exit_2(command: list[str], tmp_path: Path) -> None:
    path = str(tmp_path / "nope.conf")
    result = run([*command, "-d", "4", "-f", path])
    assert (result.returncode, result.stdout) == (2, "")
    assert (
        result.stderr
        == f"proxsmtpd: {path}: couldn't open config file: No such file or directory\n"
    )


@pytest.mark.parametrize("command", [FAKE, REAL])
def test_usage_and_version_in_a_process(command: list[str]) -> None:
    usage = run([*command, "-q"])
    assert usage.returncode == 2
    assert "usage: proxsmtpd" in usage.stderr
    version = run([*command, "-v"])
    assert version.returncode == 0
    assert "(config: /etc/proxsmtpd.conf)" in version.stdout


@pytest.mark.parametrize(
    "command",
    [FAKE, REAL],
)
@pytest.mark.parametrize("daemon", [False, True])
def test_bind_failure_exits_1_and_leaves_no_process(
    command: list[str], daemon: bool, tmp_path: Path
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        path = write_conf(tmp_path, port)
        pid_file = tmp_path / "p.pid"
        result = run([*command, *([] if daemon else ["-d", "0"]), "-f", path, "-p", str(pid_file)])
    assert result.returncode == 1
    assert "couldn't bind to address" in result.stderr
    assert "Address already in use" in result.stderr
    assert result.stderr.count(f"127.0.0.1:{port}") == 1, result.stderr  # named once
    assert "Traceback" not in result.stderr
    assert not pid_file.exists()
    assert processes_using(path) == []


def test_daemon_detaches_and_serves(tmp_path: Path, cleanup: list[str]) -> None:
    port = free_port()
    # One process: the stand-in server is not forked into workers (tests/ops covers that).
    path = write_conf(tmp_path, port, "Workers: 1\n")
    pid_file = tmp_path / "p.pid"
    result = run([*FAKE, "-f", path, "-p", str(pid_file)])
    assert result.returncode == 0, result.stderr
    cleanup.append(path)
    pid = int(pid_file.read_text())
    assert pid_file.read_text() == f"{pid}\n"
    assert processes_using(path) == [pid]
    assert os.readlink(f"/proc/{pid}/cwd") == "/"
    for fd in (0, 1, 2):
        assert os.readlink(f"/proc/{pid}/fd/{fd}") == os.devnull
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ppid, sid = int(stat[1]), int(stat[3])
    assert sid not in (os.getsid(0), pid)  # a new session, and not its leader
    assert ppid != os.getpid()
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE):
        pass
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not pid_file.exists(), "the pid file to go")
    wait_until(lambda: processes_using(path) == [], "the daemon to exit")


def test_daemon_without_syslog_refuses_to_start(tmp_path: Path) -> None:
    """Once detached, stderr is /dev/null: the daemon must not "log to stderr" there."""
    path = write_conf(tmp_path, free_port())
    missing = tmp_path / "no-syslog"
    result = run([*FAKE, "-f", path], env={**ENV, "PROXSMTPD_SYSLOG_SOCKET": str(missing)})
    assert result.returncode == 1
    assert result.stderr.startswith(f"proxsmtpd: no syslog socket at {missing} (")
    assert "-d LEVEL" in result.stderr
    assert processes_using(path) == []


def test_daemon_logs_to_syslog_with_pid(
    tmp_path: Path, syslog: socket.socket, cleanup: list[str]
) -> None:
    path = write_conf(tmp_path, free_port(), "FilterCommand: cat | cat\n")
    pid_file = tmp_path / "p.pid"
    assert run([*FAKE, "-f", path, "-p", str(pid_file)]).returncode == 0
    cleanup.append(path)
    pid = int(pid_file.read_text())
    line = syslog_lines(syslog, "FilterCommand")[-1]
    # logged before detaching, by the process the shell started
    assert re.match(r"<20>proxsmtpd\[\d+\]: FilterCommand 'cat \| cat' runs under", line)
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: processes_using(path) == [], "the daemon to exit")


def test_daemon_makes_relative_paths_absolute(
    tmp_path: Path, syslog: socket.socket, cleanup: list[str]
) -> None:
    """The daemon runs in /: -f must still name the file SIGHUP reloads, -p its pid file."""
    port = free_port()
    # One process: the log lines below are read by the pid in the pid file, and with
    # Workers each worker logs its own "listening on" and "SIGHUP: reloaded" with its pid.
    path = write_conf(tmp_path, port, "Workers: 1\n")
    result = subprocess.run(
        [*REAL, "-f", "proxsmtpd.conf", "-p", "rel.pid"],
        env=ENV,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    cleanup.append(str(tmp_path))
    pid = int((tmp_path / "rel.pid").read_text())
    assert not Path("/rel.pid").exists()
    assert os.readlink(f"/proc/{pid}/cwd") == "/"
    listening = syslog_lines(syslog, "listening on")[-1]
    assert listening.startswith(f"<22>proxsmtpd[{pid}]: listening on 127.0.0.1:{port}")
    os.kill(pid, signal.SIGHUP)
    assert syslog_lines(syslog, "SIGHUP")[-1].endswith(f"SIGHUP: reloaded {path}\x00")
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not (tmp_path / "rel.pid").exists(), "the pid file to go")


def test_daemon_reports_late_errors_to_the_shell(tmp_path: Path) -> None:
    path = write_conf(tmp_path, free_port())
    bad = tmp_path / "no-dir" / "p.pid"
    result = run([*FAKE, "-f", path, "-p", str(bad)])
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        f"proxsmtpd: couldn't write pid file: {bad}: No such file or directory"
    )
    assert processes_using(path) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="switching User needs root")
@pytest.mark.parametrize("transparent", [False, True])
def test_user_switch_after_bind(tmp_path: Path, transparent: bool, cleanup: list[str]) -> None:
    nobody = pwd.getpwnam("nobody")
    extra = "User: nobody\n" + ("TransparentProxy: full\n" if transparent else "")
    extra += "Workers: 1\n"  # the stand-in server serves in this process, not in workers
    # a port below 1024 works because the switch comes after bind
    port = next(p for p in range(1000, 1024) if _port_free(p))
    path = write_conf(tmp_path, port, extra)
    proc = subprocess.Popen(
        [*FAKE, "-d", "1", "-f", path],
        env=ENV,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == f"SERVING {proc.pid}\n"
        fields = status_fields(proc.pid)
        assert fields["Uid"].split() == [str(nobody.pw_uid)] * 4
        assert fields["Gid"].split() == [str(nobody.pw_gid)] * 4
        assert fields["Groups"] == ""
        expected_caps = (1 << 12) if transparent else 0  # CAP_NET_ADMIN only
        assert int(fields["CapEff"], 16) == expected_caps
        assert int(fields["CapPrm"], 16) == expected_caps
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert "running as root" not in err


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.mark.parametrize("wait_for_pid_file", [False, True], ids=["early-sigterm", "pid-file"])
def test_real_server_exits_0_on_sigterm(
    tmp_path: Path, cleanup: list[str], wait_for_pid_file: bool
) -> None:
    port = free_port()
    path = write_conf(tmp_path, port)
    pid_file = tmp_path / "p.pid"
    proc = subprocess.Popen(
        [*REAL, "-d", "2", "-f", path, "-p", str(pid_file)],
        env=ENV,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: _accepts(port) or proc.poll() is not None, "the port to accept")
        if wait_for_pid_file:
            wait_until(
                lambda: pid_file.exists() and pid_file.read_text().endswith("\n"), "pid file"
            )
            assert pid_file.read_text() == f"{proc.pid}\n"
        # Otherwise: the port accepts (backlog) as soon as it is bound, before the pid file
        # is written and before serving starts; a SIGTERM then must still end in exit 0.
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert not pid_file.exists()


def test_a_busy_listen_tls_is_the_address_named() -> None:
    """bind_listeners names the listener that failed (in OSError.filename, which start-up
    prints once), not Listen's address when ListenTLS is the busy one."""
    import attrs

    from trio_proxsmtp.common.address import parse_address
    from trio_proxsmtp.config.model import Config
    from trio_proxsmtp.daemon.listeners import bind_listeners

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        config = attrs.evolve(
            Config(),
            listen=parse_address(f"127.0.0.1:{free_port()}", 25),
            listen_tls=parse_address(f"127.0.0.1:{port}", 465),
        )
        with pytest.raises(OSError) as caught:
            bind_listeners(config)
    assert caught.value.filename == f"127.0.0.1:{port}"
    assert caught.value.strerror == os.strerror(caught.value.errno)
