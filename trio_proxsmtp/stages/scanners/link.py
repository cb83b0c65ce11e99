"""A scanner's socket: opened within ScannerConnectTimeout; every read and write within
ScannerTimeout (the caller's deadline); a failure of any kind is a `ScannerFailure`."""

from __future__ import annotations

import errno
import socket

import trio

from trio_proxsmtp.protocol.errors import RemoteError
from trio_proxsmtp.stages.settings import MilterAddress

__all__ = ["ScannerFailure", "ScannerTimeout", "connect", "read_to_end", "send_all"]

# A scanner's answer is small (spamd's HEADERS: the header section): past this it is garbage.
MAX_ANSWER = 1024 * 1024


class ScannerFailure(RemoteError):
    """The scanner is down, slow, hung up, or answered garbage: ScannerDefaultAction."""


class ScannerTimeout(ScannerFailure):
    """The scanner did not connect or answer in time."""


async def connect(address: MilterAddress, timeout: float) -> trio.abc.Stream:
    with trio.move_on_after(timeout):
        try:
            if address.path is not None:
                return await trio.open_unix_socket(address.path)
            assert address.host is not None
            return await trio.open_tcp_stream(address.host, address.port)
        except (OSError, socket.gaierror) as exc:
            raise ScannerFailure(f"cannot connect: {exc.strerror or exc}") from None
    raise ScannerTimeout(f"connect timed out after {timeout:g}s")


async def send_all(stream: trio.abc.Stream, data: bytes) -> None:
    try:
        await stream.send_all(data)
    except (trio.BrokenResourceError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno not in (errno.EPIPE, errno.ECONNRESET, None):
            raise ScannerFailure(f"send failed: {exc}") from None
        raise ScannerFailure("the scanner closed the connection") from None


async def read_to_end(stream: trio.abc.Stream, *, until: bytes | None = None) -> bytes:
    """The answer: up to the end of the stream (or the first `until` byte)."""
    parts: list[bytes] = []
    size = 0
    while True:
        try:
            data = await stream.receive_some(65536)
        except (trio.BrokenResourceError, OSError) as exc:
            raise ScannerFailure(f"receive failed: {exc}") from None
        if not data:
            return b"".join(parts)
        parts.append(bytes(data))
        size += len(data)
        if until is not None and until in data:
            return b"".join(parts)
        if size > MAX_ANSWER:
            raise ScannerFailure(f"an answer of more than {MAX_ANSWER} bytes")
