"""Real spamd and clamd for the integration tests, from temporary configs on free loopback
ports, never as services; stopped by pid (SIGTERM, then SIGKILL), their files removed.

- spamd: ``-L`` (local tests only, no network), ``-x`` (no per-user config), ``-u nobody``
  when run as root, the rules the package ships (never sa-update).
- clamd: a temporary clamd.conf (``Foreground yes``, ``TCPSocket`` on 127.0.0.1) and a
  database directory holding one ``.ndb`` signature written at run time: the EICAR test
  string, kept here only base64-encoded (never freshclam).
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")
EICAR = base64.b64decode(
    b"WDVPIVAlQEFQWzRcUFpYNTQoUF4pN0NDKTd9JEVJQ0FSLVNUQU5EQVJELUFOVElWSVJVUy1URVNULUZJTEUhJEgrSCo="
)
SIGNATURE = "Eicar-Test-Signature"


def require(program: str, package: str) -> str:
    found = shutil.which(program) or shutil.which(program, path=os.pathsep.join(SBIN))
    if found is None:
        pytest.skip(f"{program} is not installed: apt-get install {package}")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers(port: int, probe: bytes, expect: bytes) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(probe)
            sock.shutdown(socket.SHUT_WR)
            return expect in sock.recv(1024)
    except OSError:
        return False


@contextlib.contextmanager
def _running(
    argv: list[str], log: Path, port: int, probe: bytes, expect: bytes, within: float
) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + within
        while not _answers(port, probe, expect):
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{argv[0]} did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield process
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, SIGKILL it after 10 s; reap."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@contextlib.contextmanager
def running_spamd() -> Iterator[int]:
    """spamd on 127.0.0.1:PORT; yields PORT."""
    spamd = require("spamd", "spamd")
    root = Path(tempfile.mkdtemp(prefix="trio-proxsmtp-spamd."))
    port = free_port()
    argv = [spamd, "-L", "-x", "--listen", f"127.0.0.1:{port}", "--max-children", "4"]
    argv += ["--pidfile", str(root / "spamd.pid"), "-s", "stderr"]
    if os.geteuid() == 0:
        argv += ["-u", "nobody"]
    try:
        with _running(argv, root / "spamd.log", port, b"PING SPAMC/1.5\r\n\r\n", b"PONG", 60):
            yield port
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def running_clamd() -> Iterator[int]:
    """clamd on 127.0.0.1:PORT with the one test signature; yields PORT."""
    clamd = require("clamd", "clamav-daemon")
    root = Path(tempfile.mkdtemp(prefix="trio-proxsmtp-clamd."))
    port = free_port()
    database = root / "db"
    database.mkdir()
    (database / "test.ndb").write_text(f"{SIGNATURE}:0:*:{EICAR.hex()}\n")
    conf = root / "clamd.conf"
    conf.write_text(
        "Foreground yes\n"
        f"TCPSocket {port}\nTCPAddr 127.0.0.1\n"
        f"DatabaseDirectory {database}\n"
        f"LogFile {root / 'clamd.file.log'}\n"
        "User root\n"
        "StreamMaxLength 2M\n"
    )
    try:
        with _running([clamd, "-c", str(conf)], root / "clamd.log", port, b"zPING\0", b"PONG", 60):
            yield port
    finally:
        shutil.rmtree(root, ignore_errors=True)
