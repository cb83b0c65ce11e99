"""Helpers for the real-milter fixtures (imported by conftest and the tests)."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import attrs

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
