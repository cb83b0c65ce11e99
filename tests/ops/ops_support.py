"""Helpers for the operations tests: the real proxy as a subprocess, watched from Trio.

Every wait polls with a short `trio.sleep` under the caller's `trio.fail_after`, so the
FakeUpstream and FakeClient in the test process keep running while we wait.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
POLL = 0.02


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


async def wait_for(predicate: Callable[[], bool]) -> None:
    """Poll until predicate() is true; the caller's fail_after bounds it."""
    while not predicate():
        await trio.sleep(POLL)


def group_alive(pgid: int) -> bool:
    """Does any live (non-zombie) process belong to process group pgid?"""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields: state ppid pgrp ...
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def open_files_under(pid: int, directory: Path) -> list[str]:
    """What process `pid` has open below `directory` (an unnamed O_TMPFILE spool shows as
    "DIR/#INODE (deleted)"), from /proc."""
    found = []
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(f"{directory}/"):
            found.append(target)
    return found


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


class ProxyProcess:
    """`python -m trio_proxsmtp -d 3 -f CONF`, stderr into a log file."""

    def __init__(
        self, config: Path, log: Path, *extra: str, env: dict[str, str] | None = None
    ) -> None:
        self.log_path = log
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trio_proxsmtp", "-d", "3", "-f", str(config), *extra],
            env={**ENV, **(env or {})},
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def pids(self) -> list[int]:
        """The proxy's processes: its own pid, then its workers under `Workers: N` (children
        running the same command line; a filter is a child too, but runs another program)."""
        pid = self.proc.pid
        own = _cmdline(pid)
        workers = [
            int(entry.name)
            for entry in Path("/proc").iterdir()
            if entry.name.isdigit() and _ppid(int(entry.name)) == pid
            and _cmdline(int(entry.name)) == own
        ]  # fmt: skip
        return [pid, *sorted(workers)]

    def exited(self) -> bool:
        return self.proc.poll() is not None

    async def wait_log(self, text: str, count: int = 1) -> None:
        def seen() -> bool:
            if self.exited() and self.log().count(text) < count:
                raise AssertionError(f"proxy exited ({self.proc.returncode}):\n{self.log()}")
            return self.log().count(text) >= count

        await wait_for(seen)

    async def started(self) -> None:
        await self.wait_log("listening on")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    async def wait_exit(self) -> int:
        await wait_for(self.exited)
        assert self.proc.returncode is not None
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._log.close()


@contextmanager
def proxy_process(
    config: Path, log: Path, *extra: str, env: dict[str, str] | None = None
) -> Iterator[ProxyProcess]:
    proxy = ProxyProcess(config, log, *extra, env=env)
    try:
        yield proxy
    finally:
        proxy.kill()


@contextmanager
def background(
    argv: list[str], out: Path, stop_wait: float = 15
) -> Iterator[subprocess.Popen[bytes]]:
    """Any helper process, stdout+stderr to `out`; terminated and reaped at the end."""
    with out.open("wb") as f:
        proc = subprocess.Popen(
            argv, env=ENV, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(stop_wait)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
