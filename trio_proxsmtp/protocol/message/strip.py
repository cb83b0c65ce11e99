"""Removing header fields by name prefix, streaming: the native spamd scanner owns the
``X-Spam-*`` fields of the messages it tags, so those a sender put there are dropped
before spamd's own are added (docs/behaviour.md §11.16)."""

from __future__ import annotations

from trio_proxsmtp.protocol.message.edit import is_field_start

__all__ = ["HeaderFieldStripper"]


class HeaderFieldStripper:
    """Passes a message through, without the header fields (continuation lines included)
    whose name starts with `prefix` (any case).  Only the header section is looked at: it
    ends at the first blank (empty or whitespace-only) line, or at a line that is neither a
    field nor a continuation, as edit.py and the Header option read it; the output never
    depends on how the input was split."""

    def __init__(self, prefix: bytes) -> None:
        self._prefix = prefix.lower()
        self._in_header = True
        self._dropping = False
        self._line = bytearray()  # the header line so far

    def feed(self, data: bytes) -> bytes:
        if not self._in_header:
            return data
        out = bytearray()
        pos = 0
        while pos < len(data):
            end = data.find(b"\n", pos)
            if end < 0:
                self._line += data[pos:]
                break
            self._line += data[pos : end + 1]
            pos = end + 1
            out += self._take(bytes(self._line))
            self._line.clear()
            if self.body_reached:
                out += data[pos:]
                break
        return bytes(out)

    @property
    def body_reached(self) -> bool:
        return not self._in_header

    def finish(self) -> bytes:
        """What is left: a last header line without its line end."""
        line, self._line = bytes(self._line), bytearray()
        return self._take(line) if line and self._in_header else line

    def _take(self, line: bytes) -> bytes:
        if not line.strip():
            self._in_header = False
            return line
        if line[:1] in (b" ", b"\t"):
            return b"" if self._dropping else line
        if not is_field_start(line):  # the body, with no blank line before it
            self._in_header = False
            return line
        self._dropping = line[: len(self._prefix)].lower() == self._prefix
        return b"" if self._dropping else line
