"""SMTP replies: the value type and filter-text normalisation (the upstream reply parser is
`reply_parser.py`).

Text is decoded from the wire as utf-8 with surrogateescape and encoded back the same way,
so relaying a reply is byte-exact even for 8-bit garbage.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs

__all__ = ["ENCODING", "ERRORS", "LOCAL_ERROR", "Reply", "reply_from_text"]

ENCODING = "utf-8"
ERRORS = "surrogateescape"

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
        line.encode(ENCODING, ERRORS)  # UnicodeEncodeError (a ValueError) if not wire text


@attrs.frozen
class Reply:
    """A complete (possibly multi-line) SMTP reply; `lines` hold the text after "NNN-"/"NNN "."""

    code: int = attrs.field(validator=_check_code)
    lines: tuple[str, ...] = attrs.field(converter=_to_lines, validator=_check_lines)

    @classmethod
    def single(cls, code: int, text: str) -> Reply:
        return cls(code, (text,))

    @classmethod
    def _checked(cls, code: int, lines: tuple[str, ...]) -> Reply:
        """A reply whose code and lines the caller has already checked (ReplyParser: a
        code in 100..599, lines cut at LF with CR replaced, decoded with surrogateescape):
        built without running the validators again, once per upstream reply."""
        reply = object.__new__(cls)
        object.__setattr__(reply, "code", code)
        object.__setattr__(reply, "lines", lines)
        return reply

    def to_bytes(self) -> bytes:
        """The reply as wire bytes, every line ending in CRLF."""
        # The final line always has its space, even with no text: "250 " from smtp-sink must
        # reach the client as "250 ", or swaks waits for more (found by the integration tests).
        if len(self.lines) == 1:
            return f"{self.code} {self.lines[0]}\r\n".encode(ENCODING, ERRORS)
        out = [f"{self.code}-{text}\r\n" for text in self.lines[:-1]]
        out.append(f"{self.code} {self.lines[-1]}\r\n")
        return "".join(out).encode(ENCODING, ERRORS)

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
    raw = text.encode(ENCODING, ERRORS)
    if len(raw) <= limit:
        return text
    cut = limit
    # Back off over UTF-8 continuation bytes so a multi-byte character is not split.
    while cut > 0 and raw[cut] & 0xC0 == 0x80:
        cut -= 1
    return raw[:cut].decode(ENCODING, ERRORS)
