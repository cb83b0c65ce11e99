"""BDAT (RFC 3030 CHUNKING) in both directions, with bytes only.

A BDAT command announces exactly how many bytes follow it: no terminator, no dot-stuffing,
no line-ending rewrite, so what the client sends is the message byte for byte.
`parse_bdat` reads the command, `ChunkReader` takes one chunk's bytes out of the client's
stream (whatever the packet boundaries, handing back the pipelined bytes that follow it),
and `BdatTransfer` adds the chunks of one message up against a size limit. `BdatSender`
frames a message as BDAT chunks for the next server.

A BDAT whose size cannot be read leaves the stream without a known boundary: the session
must reply and close the connection (RFC 3030 §3 cannot resynchronise it).
"""

from __future__ import annotations

import re

import attrs

from trio_proxsmtp.protocol.errors import LocalProtocolError, RemoteProtocolError
from trio_proxsmtp.protocol.smtp.replies import Reply

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "MAX_CHUNK_SIZE_DIGITS",
    "BdatCommand",
    "BdatSender",
    "BdatSyntaxError",
    "BdatTransfer",
    "ChunkReader",
    "bdat_command",
    "bdat_frames",
    "parse_bdat",
]

DEFAULT_CHUNK_SIZE = 256 * 1024
"""Bytes per BDAT chunk sent upstream: big enough that the command costs nothing."""
MAX_CHUNK_SIZE_DIGITS = 18
"""Longest chunk size accepted (below 10**18): a bound on the digits, not on the mail."""

_BDAT_ARGUMENT = re.compile(r"([0-9]+)(?:[ \t]+(LAST))?", re.IGNORECASE)
SYNTAX_REPLY = Reply.single(501, "5.5.4 Syntax: BDAT chunk-size [LAST]")


class BdatSyntaxError(RemoteProtocolError):
    """A BDAT whose chunk size cannot be read; `reply` is the 501 for the client."""


@attrs.frozen
class BdatCommand:
    """``BDAT size [LAST]``."""

    size: int
    last: bool


def parse_bdat(argument: str) -> BdatCommand:
    """Parse the argument of BDAT (the text after the verb, e.g. ``"1024 LAST"``)."""
    m = _BDAT_ARGUMENT.fullmatch(argument.strip(" \t"))
    if m is None:
        raise BdatSyntaxError(f"BDAT argument not understood: {argument!r}", SYNTAX_REPLY)
    digits = m.group(1).lstrip("0") or "0"
    if len(digits) > MAX_CHUNK_SIZE_DIGITS:
        raise BdatSyntaxError(f"BDAT chunk size too large: {m.group(1)}", SYNTAX_REPLY)
    return BdatCommand(int(digits), m.group(2) is not None)


def bdat_command(size: int, last: bool = False) -> bytes:
    """The wire form of ``BDAT size [LAST]``."""
    if size < 0:
        raise LocalProtocolError(f"negative BDAT size {size}")
    return b"BDAT %d%s\r\n" % (size, b" LAST" if last else b"")


class ChunkReader:
    """The client's bytes after a BDAT command -> exactly `size` bytes of chunk."""

    def __init__(self, size: int) -> None:
        if size < 0:
            raise LocalProtocolError(f"negative BDAT size {size}")
        self._remaining = size
        self._rest = b""

    @property
    def remaining(self) -> int:
        """Chunk bytes still to come."""
        return self._remaining

    @property
    def done(self) -> bool:
        """True once the whole chunk was returned (at once for a zero-size chunk)."""
        return self._remaining == 0

    def feed(self, data: bytes) -> bytes:
        """Consume client bytes; return those that belong to the chunk.

        Bytes past the chunk's end are kept for `take_remaining`; feeding once done is a bug.
        """
        if self.done:
            raise LocalProtocolError("ChunkReader fed after the end of its chunk")
        if len(data) <= self._remaining:
            self._remaining -= len(data)
            return data
        take, self._rest = data[: self._remaining], data[self._remaining :]
        self._remaining = 0
        return take

    def take_remaining(self) -> bytes:
        """Client bytes after the chunk (pipelined commands), handed over once."""
        rest, self._rest = self._rest, b""
        return rest


class BdatTransfer:
    """The chunks of one message: their sizes, their total, and a limit on it.

    `max_size` 0 means no limit. Past the limit the transfer keeps reading (the client
    has to be heard out to its LAST) but `feed` returns nothing more to store, and
    `too_big` tells the session to answer 552 at the end.
    """

    def __init__(self, max_size: int = 0) -> None:
        self.max_size = max_size
        self.chunks: list[int] = []
        """The announced size of every chunk begun, in order."""
        self.size = 0
        """Message bytes received so far (past the limit too)."""
        self.finished = False
        """True once the LAST chunk was read whole."""
        self._reader: ChunkReader | None = None
        self._last = False

    @property
    def too_big(self) -> bool:
        return self.max_size > 0 and self.size > self.max_size

    @property
    def in_chunk(self) -> bool:
        """True while a chunk's bytes are still to come."""
        return self._reader is not None and not self._reader.done

    def begin(self, command: BdatCommand) -> None:
        """A BDAT command was accepted: its bytes come next."""
        if self.finished:
            raise LocalProtocolError("BDAT after the LAST chunk")
        if self.in_chunk:
            raise LocalProtocolError("BDAT before the previous chunk ended")
        self.chunks.append(command.size)
        self._reader = ChunkReader(command.size)
        self._last = command.last
        self._check_end()

    def feed(self, data: bytes) -> bytes:
        """Consume client bytes of the current chunk; return the bytes to store."""
        if self._reader is None or self._reader.done:
            raise LocalProtocolError("BdatTransfer fed outside a chunk")
        chunk = self._reader.feed(data)
        was_too_big = self.too_big
        self.size += len(chunk)
        self._check_end()
        if was_too_big:
            return b""
        if self.too_big:
            return chunk[: len(chunk) - (self.size - self.max_size)]
        return chunk

    def take_remaining(self) -> bytes:
        """Client bytes after the current chunk, handed over once."""
        return b"" if self._reader is None else self._reader.take_remaining()

    def _check_end(self) -> None:
        if self._last and self._reader is not None and self._reader.done:
            self.finished = True


class BdatSender:
    """Message bytes -> BDAT frames (command line and chunk) of `chunk_size` bytes each.

    The bytes go out unchanged: BDAT needs no stuffing. Every frame but the last is a full
    chunk; `finish` sends the rest as ``BDAT n LAST`` (``BDAT 0 LAST`` for an empty message).
    Each frame gets its own reply from the next server.
    """

    def __init__(self, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        if chunk_size < 1:
            raise LocalProtocolError(f"BDAT chunk size must be positive: {chunk_size}")
        self.chunk_size = chunk_size
        self._pending = bytearray()
        self._finished = False

    def feed(self, data: bytes) -> list[bytes]:
        """Consume message bytes; return the frames now complete (possibly none)."""
        if self._finished:
            raise LocalProtocolError("BdatSender fed after finish()")
        self._pending += data
        size = self.chunk_size
        # A full chunk goes once a byte after it exists: the last one is kept for `finish`,
        # so a message of whole chunks ends "BDAT size LAST", not with an empty chunk.
        count = (len(self._pending) - 1) // size if self._pending else 0
        pending = bytes(self._pending[: count * size])
        del self._pending[: count * size]
        return [bdat_command(size) + pending[i * size : (i + 1) * size] for i in range(count)]

    def finish(self) -> bytes:
        """The LAST frame, with whatever is left (possibly nothing)."""
        if self._finished:
            raise LocalProtocolError("BdatSender finished twice")
        self._finished = True
        rest = bytes(self._pending)
        self._pending.clear()
        return bdat_command(len(rest), last=True) + rest


def bdat_frames(message: bytes, chunk_size: int = DEFAULT_CHUNK_SIZE) -> list[bytes]:
    """All the frames of `message`, the LAST one included."""
    sender = BdatSender(chunk_size)
    return [*sender.feed(message), sender.finish()]
