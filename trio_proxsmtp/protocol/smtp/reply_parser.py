"""The upstream reply parser: complete replies from the next server's bytes, bounded in
line length and count; a reply it cannot read is the peer's fault (`RemoteProtocolError`)."""

from __future__ import annotations

from trio_proxsmtp.protocol.errors import RemoteProtocolError
from trio_proxsmtp.protocol.smtp.lines import LineBuffer, LineTooLong
from trio_proxsmtp.protocol.smtp.replies import ENCODING, ERRORS, LOCAL_ERROR, Reply

__all__ = ["ReplyParser"]

_UPSTREAM_BROKEN = LOCAL_ERROR


class ReplyParser:
    """Assembles complete replies from upstream bytes, bounded in line length and count.

    After a `RemoteProtocolError` the parser stays broken: the stream can no longer be
    trusted to be in step, so every later `next_reply` raises the same error.
    """

    def __init__(self, max_line: int = 4096, max_lines: int = 200) -> None:
        self._lines = LineBuffer(max_line)
        self._max_lines = max_lines
        self._code: int | None = None
        self._texts: list[str] = []
        self._error: RemoteProtocolError | None = None

    def feed(self, data: bytes) -> None:
        self._lines.feed(data)

    @property
    def buffered_size(self) -> int:
        """Bytes received and not yet part of a returned reply (a TLS boundary must see
        none: what follows a 220 to STARTTLS is the handshake, never more replies)."""
        return self._lines.buffered_size + sum(len(text) for text in self._texts)

    def next_reply(self) -> Reply | None:
        """The next complete reply, or None when more data is needed."""
        if self._error is not None:
            raise self._error
        try:
            return self._next_reply()
        except RemoteProtocolError as error:
            self._error = error
            raise

    def _next_reply(self) -> Reply | None:
        while True:
            line = self._lines.next_line()
            if line is None:
                return None
            if isinstance(line, LineTooLong):
                raise RemoteProtocolError(
                    f"upstream reply line too long ({line.length} bytes)", _UPSTREAM_BROKEN
                )
            code, final, text = _split_reply_line(line)
            if self._code is not None and code != self._code:
                raise RemoteProtocolError(
                    f"upstream reply continuation code {code} differs from {self._code}",
                    _UPSTREAM_BROKEN,
                )
            self._code = code
            self._texts.append(text)
            if len(self._texts) > self._max_lines:
                raise RemoteProtocolError(
                    f"upstream reply has more than {self._max_lines} lines", _UPSTREAM_BROKEN
                )
            if final:
                reply = Reply._checked(code, tuple(self._texts))
                self._code = None
                self._texts = []
                return reply


def _split_reply_line(line: bytes) -> tuple[int, bool, str]:
    """(code, is_final, text) of one reply line including its terminator."""
    body = line[:-2] if line.endswith(b"\r\n") else line[:-1]
    code_bytes = body[:3]
    sep = body[3:4]
    if len(code_bytes) != 3 or not code_bytes.isdigit() or sep not in (b" ", b"-", b""):
        raise RemoteProtocolError(f"malformed upstream reply line {line[:80]!r}", _UPSTREAM_BROKEN)
    code = int(code_bytes)
    if not 100 <= code <= 599:
        raise RemoteProtocolError(f"upstream reply code {code} out of range", _UPSTREAM_BROKEN)
    text = body[4:].decode(ENCODING, ERRORS)
    if "\r" in text:
        # A stray CR inside a line is not a line break for us, but must not reach a client.
        text = text.replace("\r", " ")
    return code, sep != b"-", text
