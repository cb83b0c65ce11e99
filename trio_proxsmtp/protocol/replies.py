"""SMTP replies: the value type, the upstream reply parser and filter-text normalisation.

Text is decoded from the wire as utf-8 with surrogateescape and encoded back the same way,
so relaying a reply is byte-exact even for 8-bit garbage.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs

from trio_proxsmtp.protocol.errors import RemoteProtocolError
from trio_proxsmtp.protocol.lines import LineBuffer, LineTooLong

__all__ = ["LOCAL_ERROR", "Reply", "ReplyParser", "reply_from_text"]

_ENCODING = "utf-8"
_ERRORS = "surrogateescape"

# RFC 5321 §4.5.3.1.5: a reply line is at most 512 bytes including its CRLF.
_MAX_REPLY_LINE = 512


def _check_code(_instance: object, _attribute: object, code: int) -> None:
    if not 100 <= code <= 599:
        raise ValueError(f"reply code {code} is outside 100..599")


def _to_lines(lines: Iterable[str]) -> tuple[str, ...]:
    return tuple(lines)


def _check_lines(_instance: object, _attribute: object, lines: tuple[str, ...]) -> None:
    if not lines:
        raise ValueError("a reply needs at least one line")
    for line in lines:
        if "\r" in line or "\n" in line:
            # A line break inside a line would let a peer inject replies.
            raise ValueError(f"reply line contains a line break: {line!r}")
        line.encode(_ENCODING, _ERRORS)  # UnicodeEncodeError (a ValueError) if not wire text


@attrs.frozen
class Reply:
    """A complete (possibly multi-line) SMTP reply; `lines` hold the text after "NNN-"/"NNN "."""

    code: int = attrs.field(validator=_check_code)
    lines: tuple[str, ...] = attrs.field(converter=_to_lines, validator=_check_lines)

    @classmethod
    def single(cls, code: int, text: str) -> Reply:
        return cls(code, (text,))

    def to_bytes(self) -> bytes:
        """The reply as wire bytes, every line ending in CRLF."""
        # The final line always has its space, even with no text: "250 " from smtp-sink must
        # reach the client as "250 ", or swaks waits for more (found by the integration tests).
        out = [f"{self.code}-{text}\r\n" for text in self.lines[:-1]]
        out.append(f"{self.code} {self.lines[-1]}\r\n")
        return "".join(out).encode(_ENCODING, _ERRORS)

    @property
    def is_positive(self) -> bool:
        return 200 <= self.code < 300

    @property
    def is_intermediate(self) -> bool:
        return 300 <= self.code < 400

    @property
    def is_transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return 500 <= self.code < 600

    @property
    def text(self) -> str:
        """One line for logs: "550 5.1.1 no such user", lines joined with " / "."""
        joined = " / ".join(self.lines)
        return f"{self.code} {joined}" if joined else str(self.code)


# 1.10's one local failure reply, kept byte-exact (docs/behaviour.md): a message the filter
# could not judge, a spool that failed, upstream replies that cannot be understood.
LOCAL_ERROR = Reply.single(451, "Local Error")
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
                reply = Reply(code, tuple(self._texts))
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
    text = body[4:].decode(_ENCODING, _ERRORS)
    if "\r" in text:
        # A stray CR inside a line is not a line break for us, but must not reach a client.
        text = text.replace("\r", " ")
    return code, sep != b"-", text


def reply_from_text(text: str) -> Reply:
    """Normalise filter stderr or FilterReject text into a reply (docs/behaviour.md §6.4, B8).

    Text starting with a code 100..599 is used as it is (a "550-x" continuation becomes the
    final line "550 x", B8); anything else is wrapped in "550 Content Rejected; ".  Line
    breaks become spaces and the text is capped so that the wire line stays within 512 bytes.
    """
    text = text.replace("\r", " ").replace("\n", " ").strip()
    if not text:
        text = "Content Rejected"
    head = text[:3]
    if (
        len(head) == 3
        and head.isascii()
        and head.isdigit()
        and 100 <= int(head) <= 599
        and text[3:4] in ("", " ", "-")
    ):
        code, rest = int(head), text[4:]
    else:
        code, rest = 550, "Content Rejected; " + text
    return Reply(code, (_cap(rest, _MAX_REPLY_LINE - len("550 \r\n")),))


def _cap(text: str, limit: int) -> str:
    """Cut `text` to at most `limit` bytes on the wire, without splitting a character."""
    raw = text.encode(_ENCODING, _ERRORS)
    if len(raw) <= limit:
        return text
    cut = limit
    # Back off over UTF-8 continuation bytes so a multi-byte character is not split.
    while cut > 0 and raw[cut] & 0xC0 == 0x80:
        cut -= 1
    return raw[:cut].decode(_ENCODING, _ERRORS)
