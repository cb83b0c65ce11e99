"""Bounded line framing for SMTP commands and replies.

A line ends at LF (CRLF or a bare LF, as proxsmtpd 1.10 did) and is returned with its
terminator so it can be forwarded byte-exact.  A line longer than `max_line` is never held:
its bytes are counted and dropped as they arrive, and a single `LineTooLong` event reports
it once its end has been seen.  The result never depends on how the input was split.
"""

from __future__ import annotations

import attrs

__all__ = ["CLIENT_LINE_LIMIT", "LineBuffer", "LineTooLong"]

# proxsmtpd 1.10 answers "500 Line too long" to lines of 4222 bytes or more
# (docs/behaviour.md §4.1).
CLIENT_LINE_LIMIT = 4221

# Consumed bytes are compacted away once this many have piled up at the buffer's front.
_COMPACT_AT = 16384


@attrs.frozen
class LineTooLong:
    """A line longer than the limit was seen and discarded; `length` counts its bytes."""

    length: int


class LineBuffer:
    """Splits a byte stream into lines of at most `max_line` bytes (terminator included)."""

    def __init__(self, max_line: int) -> None:
        if max_line < 1:
            raise ValueError("max_line must be positive")
        self._max_line = max_line
        self._buf = bytearray()
        self._start = 0  # first unconsumed byte of _buf
        self._scan = 0  # no LF in _buf[_start:_scan]: resume the search here
        self._discarding: int | None = None  # bytes dropped so far of an over-long line
        self._too_long: int | None = None  # a finished over-long line, not yet reported

    @property
    def buffered_size(self) -> int:
        """Bytes held and not yet returned (an over-long line's bytes are not held)."""
        return len(self._buf) - self._start

    def feed(self, data: bytes) -> None:
        """Add bytes from the peer; those of an over-long line are dropped right here."""
        if self._discarding is not None:
            end = data.find(b"\n")
            if end < 0:
                self._discarding += len(data)
                return
            self._too_long = self._discarding + end + 1
            self._discarding = None
            data = data[end + 1 :]
        self._buf += data

    def next_line(self) -> bytes | LineTooLong | None:
        """The next complete line, a `LineTooLong`, or None when more data is needed."""
        if self._too_long is not None:
            event = LineTooLong(self._too_long)
            self._too_long = None
            return event
        if self._discarding is not None:
            return None
        end = self._buf.find(b"\n", self._scan)
        if end < 0:
            unterminated = len(self._buf) - self._start
            if unterminated >= self._max_line:
                # Even its terminator alone would push it over the limit: stop holding it.
                self._discarding = unterminated
                self._clear()
            else:
                self._scan = len(self._buf)
            return None
        end += 1
        length = end - self._start
        result: bytes | LineTooLong
        if length > self._max_line:
            result = LineTooLong(length)
        else:
            result = bytes(self._buf[self._start : end])
        self._start = self._scan = end
        if self._start == len(self._buf):
            self._clear()
        elif self._start >= _COMPACT_AT:
            del self._buf[: self._start]
            self._start = self._scan = 0
        return result

    def peek_line(self) -> bytes | None:
        """The next complete line if one is buffered and within the limit, not taken."""
        if self._too_long is not None or self._discarding is not None:
            return None
        end = self._buf.find(b"\n", self._scan)
        if end < 0 or end + 1 - self._start > self._max_line:
            return None
        return bytes(self._buf[self._start : end + 1])

    def take_remaining(self) -> bytes:
        """Hand the unconsumed bytes to another reader (e.g. the DATA receiver)."""
        rest = bytes(self._buf[self._start :])
        self._clear()
        return rest

    def _clear(self) -> None:
        self._buf.clear()
        self._start = self._scan = 0
