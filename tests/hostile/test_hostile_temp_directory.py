"""Issue 21, item 7: `-t` passed a TempDirectory that does not exist ("warning … not
usable", `config OK`, exit 0), and every message that needed the spool then got
`451 Local Error`.  Now `-t`, start-up and SIGHUP refuse a TempDirectory the daemon cannot
create files in, as the user it serves as (`User` when started as root), with one line
FILE:LINE: TempDirectory: ... and exit status 2, as for a missing filter program
(docs/behaviour.md §2).  The real `python -m trio_proxsmtp`, as root and as nobody.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio
from hostile_support import MESSAGE
from ops_support import ENV, ROOT, free_port, proxy_process, write_config

from trio_proxsmtp.config.checks import check_temp_directory
from trio_proxsmtp.config.loader import parse_config_with_warnings
from trio_proxsmtp.config.model import Config, ConfigError
from trio_proxsmtp.testing import FakeUpstream, open_client

REAL = [sys.executable, "-m", "trio_proxsmtp"]
DEADLINE = 20.0

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="checking as User needs root")


def conf(where: Path, directory: Path, extra: str = "") -> Path:
    """A config whose line 3 is the TempDirectory."""
    path = where / "proxsmtpd.conf"
    path.write_text(
        f"Listen: 127.0.0.1:{free_port()}\nOutAddress: 127.0.0.1:{free_port()}\n"
        f"TempDirectory: {directory}\n{extra}Workers: 1\n"
    )
    path.chmod(0o644)
    return path


def run(*args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m trio_proxsmtp ARGS`, as `user` (its uid and gid only) if given."""
    entry = pwd.getpwnam(user) if user is not None else None
    return subprocess.run(
        [*REAL, *args],
        env=ENV,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
        user=entry.pw_uid if entry is not None else None,
        group=entry.pw_gid if entry is not None else None,
        extra_groups=[] if entry is not None else None,
    )


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory anyone may enter (pytest's tmp_path is root's, mode 0700)."""
    path = Path(tempfile.mkdtemp(prefix="trio-proxsmtp-hostile-"))
    try:
        path.chmod(0o755)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("mode", [["-t"], ["-d", "1"]], ids=["check", "start"])
def test_a_missing_temp_directory_stops_check_and_start(tmp_path: Path, mode: list[str]) -> None:
    missing = tmp_path / "spool"
    path = conf(tmp_path, missing)
    result = run(*mode, "-f", str(path))
    assert result.returncode == 2
    assert result.stdout == ""  # no "config OK"
    assert result.stderr == (
        f"proxsmtpd: {path}:3: TempDirectory: {missing}: No such file or directory\n"
    )


def test_a_file_is_not_a_temp_directory(tmp_path: Path) -> None:
    a_file = tmp_path / "spool"
    a_file.write_text("")
    path = conf(tmp_path, a_file)
    result = run("-t", "-f", str(path))
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"proxsmtpd: {path}:3: TempDirectory: {a_file}: not a directory\n"


def test_the_default_is_checked_too_and_names_no_line() -> None:
    # An unset TempDirectory (/tmp/) is checked like a set one; the error has no line.
    config = Config(temp_directory="/nonexistent/", path="c.conf")
    with pytest.raises(ConfigError) as info:
        check_temp_directory(config, None)
    assert str(info.value) == "c.conf: TempDirectory: /nonexistent/: No such file or directory"
    assert check_temp_directory(Config(path="c.conf")) == []  # /tmp/: sticky, writable


def test_a_read_only_file_system_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # (No read-only mount to borrow here: the file system's flag is what is read.)
    real_statvfs = os.statvfs

    def read_only(path: str) -> os.statvfs_result:
        result = real_statvfs(path)
        fields = list(result)
        fields[8] = result.f_flag | os.ST_RDONLY  # f_flag
        return os.statvfs_result(fields)

    monkeypatch.setattr(os, "statvfs", read_only)
    with pytest.raises(ConfigError) as info:
        parse_config_with_warnings(f"OutAddress: 2525\nTempDirectory: {tmp_path}\n", "c.conf")
    assert str(info.value) == f"c.conf:2: TempDirectory: {tmp_path}: read-only file system"


def test_a_usable_directory_passes_and_world_writable_still_warns(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    result = run("-t", "-f", str(conf(tmp_path, private)))
    assert (result.returncode, result.stderr) == (0, "")
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    path = conf(tmp_path, open_dir)
    result = run("-t", "-f", str(path))
    assert (result.returncode, result.stdout) == (0, f"config OK: {path}\n")
    assert result.stderr.startswith(f"proxsmtpd: warning: TempDirectory '{open_dir}' is world")


@as_root
def test_checked_as_the_user_the_daemon_switches_to(shared: Path) -> None:
    """Root may write anywhere; the daemon serves as User, with its uid and gid and no
    supplementary groups (daemon/privileges.py): that is what counts."""
    nobody = pwd.getpwnam("nobody")
    spool = shared / "spool"
    spool.mkdir(mode=0o755)  # root's
    path = conf(shared, spool, "User: nobody\n")
    result = run("-t", "-f", str(path))
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        f"proxsmtpd: {path}:3: TempDirectory: {spool}: not writable by user nobody\n"
    )
    # The same as a start would be refused, before anything is bound.
    assert run("-d", "1", "-f", str(path)).returncode == 2

    os.chown(spool, nobody.pw_uid, nobody.pw_gid)
    spool.chmod(0o700)
    result = run("-t", "-f", str(path))
    assert (result.returncode, result.stdout, result.stderr) == (0, f"config OK: {path}\n", "")

    # Every directory on the way must let the user through.
    shared.chmod(0o700)
    result = run("-t", "-f", str(path))
    assert result.returncode == 2
    assert result.stderr.endswith(f"TempDirectory: {spool}: not writable by user nobody\n")


def as_nobody(check: Callable[[], str]) -> str:
    """What `check()` returns when run as nobody (its uid and gid, no other groups), in a
    forked child: this interpreter may sit where nobody cannot exec it (under /root)."""
    nobody = pwd.getpwnam("nobody")
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read_fd)
            os.setgroups([])
            os.setresgid(nobody.pw_gid, nobody.pw_gid, nobody.pw_gid)
            os.setresuid(nobody.pw_uid, nobody.pw_uid, nobody.pw_uid)
            try:
                result = check()
            except ConfigError as exc:
                result = f"error: {exc}"
            os.write(write_fd, result.encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        output = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, output
    return output


def nobody_can_run_python() -> bool:
    try:
        return run("-v", user="nobody").returncode == 0
    except PermissionError:
        return False


@as_root
def test_without_user_the_invoking_user_is_checked(shared: Path) -> None:
    spool = shared / "spool"
    spool.mkdir(mode=0o755)  # root's
    text = f"OutAddress: 2525\nTempDirectory: {spool}\n"

    def check() -> str:
        return repr(parse_config_with_warnings(text, "c.conf")[1])

    assert as_nobody(check) == (
        f"error: c.conf:2: TempDirectory: {spool}: not writable by user nobody"
    )
    path = conf(shared, spool)
    if nobody_can_run_python():  # the real `-t`, run by nobody
        result = run("-t", "-f", str(path), user="nobody")
        assert (result.returncode, result.stdout) == (2, "")
        assert result.stderr == (
            f"proxsmtpd: {path}:3: TempDirectory: {spool}: not writable by user nobody\n"
        )
    spool.chmod(0o1777)
    assert as_nobody(check) == "[]"
    if nobody_can_run_python():
        assert run("-t", "-f", str(path), user="nobody").returncode == 0


@as_root
def test_a_check_by_another_user_warns_and_does_not_fail_a_working_config(
    shared: Path,
) -> None:
    """`-t` by an unprivileged admin cannot become User: the directory is not refused."""
    spool = shared / "spool"
    spool.mkdir(mode=0o700)  # root's: fine for `User: root`
    warning = (
        f"TempDirectory '{spool}': not checked whether user root may write to it "
        "(this process cannot take that user's credentials: -t as root checks it)"
    )
    text = f"OutAddress: 2525\nTempDirectory: {spool}\nUser: root\n"
    assert as_nobody(lambda: repr(parse_config_with_warnings(text)[1])) == repr([warning])
    # Not even reachable by nobody (a parent closed to it): still only the warning.
    closed = shared / "closed"
    closed.mkdir(mode=0o700)
    (closed / "spool").mkdir()
    hidden = f"OutAddress: 2525\nTempDirectory: {closed / 'spool'}\nUser: root\n"
    assert as_nobody(lambda: repr(parse_config_with_warnings(hidden)[1])) == repr(
        [warning.replace(str(spool), str(closed / "spool"))]
    )
    # Without User, nobody is the user the daemon would serve as: refused.
    alone = hidden.replace("User: root\n", "")
    assert as_nobody(lambda: repr(parse_config_with_warnings(alone, "c.conf")[1])) == (
        f"error: c.conf:2: TempDirectory: {closed / 'spool'}: Permission denied"
    )
    if nobody_can_run_python():  # the real `-t`, run by nobody
        path = conf(shared, spool, "User: root\n")
        result = run("-t", "-f", str(path), user="nobody")
        assert (result.returncode, result.stdout) == (0, f"config OK: {path}\n")
        assert result.stderr == f"proxsmtpd: warning: {warning}\n"


async def test_a_reload_to_a_missing_temp_directory_keeps_the_old_config(
    tmp_path: Path,
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    port = free_port()
    with trio.fail_after(30):
        async with FakeUpstream() as up:
            base = f"Listen: 127.0.0.1:{port}\nOutAddress: {up.address}\nWorkers: 1\n"
            config = write_config(tmp_path / "proxsmtpd.conf", f"{base}TempDirectory: {spool}\n")
            with proxy_process(config, tmp_path / "proxy.log") as proxy:
                await proxy.started()
                missing = tmp_path / "gone"
                write_config(config, f"{base}TempDirectory: {missing}\n")
                proxy.signal(signal.SIGHUP)
                await proxy.wait_log("config not reloaded")
                assert (
                    f"{config}:4: TempDirectory: {missing}: No such file or directory"
                    in proxy.log()
                )
                async with open_client("127.0.0.1", port) as client:
                    replies = await client.send_message("a@x", ["b@x"], MESSAGE)
                    assert replies[-1].code == 250
                proxy.signal(signal.SIGTERM)
                assert await proxy.wait_exit() == 0
