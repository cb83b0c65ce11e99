"""Helpers for the real-milter fixtures (imported by conftest and the tests)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

DOMAIN = "example.test"
SELECTOR = "test"


@attrs.frozen
class OpenDKIM:
    address: str  # Milters: value
    domain: str
    selector: str
    txt_record: bytes  # the public key record, as DNS would serve it
    private_key: Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"milter exited with {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError("milter did not start listening")


def txt_record(path: Path) -> bytes:
    """The quoted pieces of opendkim-genkey's zone file line, joined."""
    text = path.read_text()
    pieces = text[text.index("(") + 1 : text.index(")")].split('"')[1::2]
    return "".join(pieces).encode()


def start_opendkim(tmp_path: Path, settings: str, domain: str, selector: str) -> Iterator[OpenDKIM]:
    """OpenDKIM in the foreground on a free loopback port, with a key made now.

    `settings` are the opendkim.conf lines that matter (those of README's example); the
    port, the key file and what a test needs (no syslog, root, keys from a file instead of
    DNS) are filled in here.
    """
    binary = shutil.which("opendkim") or "/usr/sbin/opendkim"
    genkey = shutil.which("opendkim-genkey") or "/usr/sbin/opendkim-genkey"
    if not Path(binary).exists() or not Path(genkey).exists():
        pytest.skip("opendkim / opendkim-tools not installed (apt-get install opendkim-tools)")
    keys = tmp_path / "keys"
    keys.mkdir()
    subprocess.run(
        [genkey, "-b", "1024", "-d", domain, "-s", selector, "-D", str(keys)],
        check=True,
        capture_output=True,
    )
    port = free_port()
    lines = []
    for line in settings.splitlines():
        name = line.split(None, 1)[0] if line.strip() else ""
        if name == "Socket":
            line = f"Socket inet:{port}@127.0.0.1"
        elif name == "KeyFile":
            line = f"KeyFile {keys / (selector + '.private')}"
        lines.append(line)
    conf = tmp_path / "opendkim.conf"
    conf.write_text(
        "\n".join(
            [
                *lines,
                "Syslog no",
                f"PidFile {tmp_path / 'opendkim.pid'}",
                "UserID root",
                "RequireSafeKeys no",
                # Verification looks keys up here instead of in DNS (no network in tests).
                f"TestPublicKeys {tmp_path / 'keys.txt'}",
                "AuthservID test.proxy",
                "",
            ]
        )
    )
    record = txt_record(keys / f"{selector}.txt")
    (tmp_path / "keys.txt").write_bytes(
        f"{selector}._domainkey.{domain} ".encode() + record + b"\n"
    )
    process = subprocess.Popen([binary, "-f", "-x", str(conf)], stderr=subprocess.PIPE)
    try:
        wait_listening(port, process)
        yield OpenDKIM(
            f"inet:127.0.0.1:{port}", domain, selector, record, keys / f"{selector}.private"
        )
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()
