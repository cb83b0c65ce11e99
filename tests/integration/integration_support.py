"""Helpers for the integration tests: real binaries, free ports, processes that never leak.

Every process is started in its own session and the whole group is killed (then waited
for) when its block ends, whatever happened inside.  A binary that is truly absent skips
the test with its name; CI (.ci/run) installs swaks, postfix and proxsmtp.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import pytest
import trio

SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")
_live: set[int] = set()


def live_processes() -> set[int]:
    """Pids started by :func:`spawn` and not yet reaped (the conftest checks it is empty)."""
    return set(_live)


def require(binary: str) -> str:
    """The path of ``binary`` (PATH, then the sbin directories); skip the test if absent."""
    found = shutil.which(binary) or shutil.which(binary, path=os.pathsep.join(SBIN_DIRS))
    if found is None:
        pytest.skip(f"{binary} is not installed (CI installs it from Debian packages)")
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port, asked of the kernel without connecting.

    Connecting would make a proxy open an upstream session, which the tests count.
    """
    wanted = f"0100007F:{port:04X}"
    any_addr = f"00000000:{port:04X}"
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:  # not Linux: fall back to a bind probe
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return True
            return False
    for line in lines:
        fields = line.split()
        if len(fields) > 3 and fields[1] in (wanted, any_addr) and fields[3] == "0A":
            return True
    return False


async def wait_listening(port: int, process: trio.Process, timeout: float = 10.0) -> None:
    """Wait until ``port`` is listening; fail at once if ``process`` exits first."""
    with trio.fail_after(timeout):
        while not _listening(port):
            if process.poll() is not None:
                raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
            await trio.sleep(0.02)


def _kill_group(process: trio.Process) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


@asynccontextmanager
async def spawn(
    argv: Sequence[str],
    *,
    log: Path | None = None,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[trio.Process]:
    """Run ``argv`` in a new session for the block; the group is SIGKILLed and reaped after.

    stdout and stderr go to ``log`` (kept for a failing test's report) or /dev/null.
    """
    out = open(log, "wb") if log is not None else subprocess.DEVNULL  # noqa: SIM115
    try:
        process = await trio.lowlevel.open_process(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=cwd,
            env=None if env is None else {**os.environ, **env},
        )
    finally:
        if not isinstance(out, int):
            out.close()
    _live.add(process.pid)
    try:
        yield process
    finally:
        with trio.CancelScope(shield=True):
            if process.poll() is None:
                with suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
                with trio.move_on_after(2):
                    await process.wait()
            # Also whatever it forked (filters, smtp-sink children) that may be left.
            _kill_group(process)
            await process.wait()
            _live.discard(process.pid)


@asynccontextmanager
async def c_proxsmtpd(
    config_text: str, workdir: Path, *, out_address: str, env: Mapping[str, str] | None = None
) -> AsyncIterator[int]:
    """Run the C /usr/sbin/proxsmtpd in the foreground with ``config_text``; yield its port.

    Listen and OutAddress are appended (they win); TempDirectory is set inside ``workdir``
    unless the text sets its own.  1.10 needs MaxConnections >= 2 (its default is fine).
    """
    binary = require("proxsmtpd")
    port = free_port()
    conf = workdir / "proxsmtpd.conf"
    spool = workdir / "c-spool"  # not the default /tmp/: nothing may be left outside tmp_path
    spool.mkdir(exist_ok=True)
    conf.write_text(
        f"TempDirectory: {spool}\n{config_text}\n"
        f"Listen: 127.0.0.1:{port}\nOutAddress: {out_address}\n"
    )
    argv = [binary, "-d", "4", "-f", str(conf)]
    async with spawn(argv, log=workdir / "proxsmtpd.log", env=env) as proc:
        await wait_listening(port, proc)
        yield port
