"""The client's bytes, framed by what the session expects next (sans-IO).

One buffer holds everything the client sent that nobody consumed yet; how its next bytes
are cut is the reader's mode, set from the session's actions by `ClientReader.follow`:

- COMMAND: lines of at most CLIENT_LINE_LIMIT bytes (`Line`, `LineTooLong`);
- MESSAGE: a DATA body up to <CRLF>.<CRLF>, un-stuffed (`Body` events, the last one
  `done`); what follows the terminator stays buffered as the next commands;
- SKIP: the chunk of a BDAT we refused, discarded, never read as commands (`Skipped`);
- CHUNK: the chunk of a BDAT we take (Chunking: on), exactly its announced size, byte for
  byte (`Chunk` events, the last one `done`); what follows it stays buffered;
- the TLS boundary: what the client sent after STARTTLS, before the handshake, is
  dropped (`TlsBoundary`), so plain text can never be injected into the TLS session.

The events never depend on how the client's bytes were split (a property test splits
them at every offset), which is what keeps smuggling and injection out.
"""

from __future__ import annotations

import enum

import attrs

from trio_proxsmtp.protocol.errors import LocalProtocolError
from trio_proxsmtp.protocol.session.actions import (
    Action,
    ReceiveChunk,
    ReceiveMessage,
    SkipBytes,
    StartTLS,
)
from trio_proxsmtp.protocol.smtp.bdat import ChunkReader
from trio_proxsmtp.protocol.smtp.data import DataReceiver
from trio_proxsmtp.protocol.smtp.lines import CLIENT_LINE_LIMIT, LineBuffer, LineTooLong

__all__ = [
    "Body",
    "Chunk",
    "ClientEvent",
    "ClientReader",
    "Line",
    "LineTooLong",
    "Mode",
    "NeedData",
    "Skipped",
    "TlsBoundary",
]


class Mode(enum.Enum):
    COMMAND = "command"
    MESSAGE = "message"
    SKIP = "skip"
    CHUNK = "chunk"


@attrs.frozen
class Line:
    """A complete command line, terminator included, byte-exact."""

    data: bytes


@attrs.frozen
class Body:
    """Message bytes, un-stuffed; `done` on the last piece (the terminator was seen)."""

    data: bytes
    done: bool


@attrs.frozen
class Chunk:
    """Bytes of a BDAT chunk, as sent; `done` on the last piece of the chunk."""

    data: bytes
    done: bool


@attrs.frozen
class Skipped:
    """The refused BDAT chunk is fully discarded."""

    count: int


@attrs.frozen
class TlsBoundary:
    """Bytes sent after STARTTLS and before the handshake, discarded."""

    discarded: int


@attrs.frozen
class NeedData:
    """Nothing more can be framed until the client sends more."""


ClientEvent = Line | LineTooLong | Body | Chunk | Skipped | TlsBoundary | NeedData
NEED_DATA = NeedData()
QUIT = b"QUIT\r\n"


class ClientReader:
    """The client's unconsumed bytes and the framer for the next ones."""

    def __init__(self, max_line: int = CLIENT_LINE_LIMIT) -> None:
        self._lines = LineBuffer(max_line)
        self._mode = Mode.COMMAND
        self._receiver: DataReceiver | None = None
        self._skip = 0
        self._skip_total = 0
        self._chunk: ChunkReader | None = None
        # MESSAGE mode: bytes fed while the line buffer is empty skip it (no copy per chunk).
        self._body = b""
        # Bytes buffered when the message's end (final "." or LAST chunk) was framed; None
        # once a command line is framed after it (`quit_with_end`).
        self._after_end: int | None = None
        self._last = False  # the chunk being read is the LAST one

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def buffered_size(self) -> int:
        """Bytes held and not yet framed (what a client pipelined)."""
        return self._lines.buffered_size + len(self._body)

    @property
    def message_size(self) -> int:
        """Message bytes returned so far in MESSAGE mode (or by the last message)."""
        return self._receiver.size if self._receiver is not None else 0

    @property
    def message_dot_lines(self) -> bool:
        """Whether a line of the last message may start with a dot (`DataReceiver`)."""
        return self._receiver.dot_lines if self._receiver is not None else True

    def feed(self, data: bytes) -> None:
        if self._mode is Mode.MESSAGE:
            self._body = self._body + data if self._body else data
        else:
            self._lines.feed(data)

    def discard_buffered(self) -> int:
        """Forget what is buffered (a connection reset); the count of bytes dropped."""
        dropped = len(self._lines.take_remaining()) + len(self._body)
        self._body = b""
        return dropped

    def follow(self, action: Action) -> TlsBoundary | None:
        """Choose the framer the session's `action` implies for the next client bytes.

        StartTLS is the TLS boundary: it is crossed here, and its event returned.
        """
        if isinstance(action, ReceiveMessage):
            self.begin_message()
        elif isinstance(action, SkipBytes):
            self.begin_skip(action.count)
        elif isinstance(action, ReceiveChunk):
            self.begin_chunk(action.size, last=action.last)
        elif isinstance(action, StartTLS):
            return TlsBoundary(self.discard_buffered())
        return None

    def begin_message(self) -> None:
        self._expect(Mode.COMMAND)
        self._mode = Mode.MESSAGE
        self._receiver = DataReceiver()

    def begin_skip(self, count: int) -> None:
        self._expect(Mode.COMMAND)
        self._mode = Mode.SKIP
        self._skip = self._skip_total = max(count, 0)

    def begin_chunk(self, size: int, *, last: bool = False) -> None:
        self._expect(Mode.COMMAND)
        self._mode = Mode.CHUNK
        self._chunk = ChunkReader(size)
        self._last = last

    def _next_chunk(self) -> Chunk | NeedData:
        chunk = self._chunk
        assert chunk is not None
        if chunk.done:  # a zero-size chunk
            self._mode, self._chunk = Mode.COMMAND, None
            self._end_framed(self._last)
            return Chunk(b"", True)
        data = self._lines.take_remaining()
        if not data:
            return NEED_DATA
        piece = chunk.feed(data)
        if chunk.remaining:
            return Chunk(piece, False)
        self._lines.feed(chunk.take_remaining())
        self._mode, self._chunk = Mode.COMMAND, None
        self._end_framed(self._last)
        return Chunk(piece, True)

    def _end_framed(self, end: bool) -> None:
        if end:
            self._after_end = self._lines.buffered_size

    def peek_line(self) -> bytes | None:
        """The next complete command line buffered, without taking it (None: none, or
        not in COMMAND mode, or an over-long line comes first)."""
        if self._mode is not Mode.COMMAND:
            return None
        return self._lines.peek_line()

    def quit_with_end(self) -> bool:
        """Whether the client ended its message and a QUIT in the same breath: bytes were
        already buffered behind the message's end when it was framed, no command was
        framed since, and all that is buffered now is one QUIT line (RFC 2920 lets a
        client end a pipelined group with QUIT and wait for the replies; docs/behaviour.md
        §11.20)."""
        if not self._after_end:
            return False
        line = self.peek_line()
        return line is not None and len(line) == self.buffered_size and line.upper() == QUIT

    def next_event(self) -> ClientEvent:
        """The next framed piece in the current mode, or NEED_DATA."""
        if self._mode is Mode.CHUNK:
            return self._next_chunk()
        if self._mode is Mode.COMMAND:
            line = self._lines.next_line()
            if line is None:
                return NEED_DATA
            self._after_end = None
            return line if isinstance(line, LineTooLong) else Line(line)
        if self._mode is Mode.SKIP:
            data = self._lines.take_remaining()
            if len(data) < self._skip:
                self._skip -= len(data)
                return NEED_DATA
            self._lines.feed(data[self._skip :])
            self._mode, self._skip = Mode.COMMAND, 0
            return Skipped(self._skip_total)
        receiver = self._receiver
        assert receiver is not None
        data = self._lines.take_remaining() if self._lines.buffered_size else b""
        if self._body:
            data, self._body = data + self._body if data else self._body, b""
        if not data:
            return NEED_DATA
        body = receiver.feed(data)
        if receiver.done:
            self._lines.feed(receiver.take_remaining())
            self._mode = Mode.COMMAND
            self._end_framed(True)
            return Body(body, True)
        return Body(body, False)

    def _expect(self, mode: Mode) -> None:
        if self._mode is not mode:
            raise LocalProtocolError(f"client reader in {self._mode.value} mode, not {mode.value}")
