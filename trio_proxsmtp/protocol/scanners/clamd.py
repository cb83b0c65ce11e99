"""clamd's ``zINSTREAM``: the command, the message in length-prefixed chunks, a
zero-length chunk to end it, and clamd's one NUL-terminated reply."""

from __future__ import annotations

import struct

import attrs

from trio_proxsmtp.protocol.scanners.errors import ScannerProtocolError

__all__ = ["END_OF_STREAM", "INSTREAM", "ClamdAnswer", "instream_chunk", "parse_clamd_reply"]

INSTREAM = b"zINSTREAM\0"
END_OF_STREAM = b"\0\0\0\0"
_LENGTH = struct.Struct(">I")


def instream_chunk(data: bytes) -> bytes:
    """One chunk of the stream (never empty: an empty one ends the stream)."""
    if not data:
        raise ValueError("an empty chunk ends the stream")
    return _LENGTH.pack(len(data)) + data


@attrs.frozen
class ClamdAnswer:
    """Clean (`virus` None) or infected with `virus`."""

    virus: str | None = None

    @property
    def note(self) -> str:
        return "OK" if self.virus is None else f"{self.virus} FOUND"


def parse_clamd_reply(data: bytes) -> ClamdAnswer:
    """clamd's reply, with or without its NUL; raises `ScannerProtocolError` for an
    ``ERROR`` (``INSTREAM size limit exceeded``, …) or anything else unexpected."""
    text = data.rstrip(b"\0\n").decode("utf-8", "replace")
    _, colon, result = text.partition(": ")
    if not colon or "\0" in text:
        raise ScannerProtocolError(f"clamd: unexpected reply {text[:120]!r}")
    if result == "OK":
        return ClamdAnswer()
    if result.endswith(" FOUND") and result[:-6].strip():
        name = result[:-6].strip()
        if not name.isprintable():
            raise ScannerProtocolError(f"clamd: unprintable virus name {name[:80]!r}")
        return ClamdAnswer(name[:200])
    raise ScannerProtocolError(f"clamd: {text[:120]}")
