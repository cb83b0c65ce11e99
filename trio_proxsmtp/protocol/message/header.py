"""The ``Header`` option (docs/behaviour.md §7): expand the template, insert it into a message.

Pure: no I/O. Differences from proxsmtpd 1.10, on purpose:

* ``%d`` is an RFC 5322 date with a correct ``+HHMM`` offset (1.10 printed ``asctime`` and
  wrote the offset minutes as seconds, B9).
* A message with no blank line gets the header before its first line that is not a header
  field, or after its last line (1.10 silently dropped the header).
* The header is CRLF-clean: a ``\\n`` or ``\\r`` in the template that is not part of a CRLF
  becomes CRLF (docs/behaviour.md §5.1), and trailing line breaks are removed so the header
  can never end the header block early.
"""

from __future__ import annotations

import datetime
import re

MAX_HEADER = 1023

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_ESCAPES = {"r": "\r", "n": "\n", "t": "\t"}
CRLF = b"\r\n"


def format_date(now: datetime.datetime) -> str:
    """RFC 5322 date, e.g. ``Thu, 26 Nov 2026 07:52:15 +0530``; English names, any locale."""
    offset = now.utcoffset()
    if offset is None:
        raise ValueError("format_date needs an aware datetime")
    minutes = round(offset.total_seconds() / 60)
    sign = "-" if minutes < 0 else "+"
    hours, mins = divmod(abs(minutes), 60)
    return (
        f"{_DAYS[now.weekday()]}, {now.day:02d} {_MONTHS[now.month - 1]} {now.year:04d} "
        f"{now.hour:02d}:{now.minute:02d}:{now.second:02d} {sign}{hours:02d}{mins:02d}"
    )


def expand_header(
    template: str, *, client: str, local: str, now: datetime.datetime
) -> tuple[bytes, list[str]]:
    """Expand escapes and ``%`` symbols; return (header without final CRLF, warnings)."""
    out: list[str] = []
    warnings: list[str] = []
    i, n = 0, len(template)
    while i < n:
        ch = template[i]
        if ch == "\\" and i + 1 < n:
            nxt = template[i + 1]
            out.append(_ESCAPES.get(nxt, nxt))
            i += 2
        elif ch == "%" and i + 1 < n:
            sym = template[i + 1]
            if sym == "i":
                out.append(client)
            elif sym == "l":
                out.append(local)
            elif sym == "d":
                out.append(format_date(now))
            elif sym == "%":
                out.append("%")
            else:
                warnings.append(f"invalid header symbol: %{sym}")
            i += 2
        else:  # ordinary character, or a lone trailing "\" or "%" (kept)
            out.append(ch)
            i += 1
    raw = "".join(out).encode("utf-8", errors="surrogateescape")
    header = _crlf_clean(raw)[:MAX_HEADER].rstrip(b"\r\n")
    return header, warnings


def _crlf_clean(data: bytes) -> bytes:
    """Turn every bare CR and bare LF into CRLF."""
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


# A header field's name: printable US-ASCII but ":" (RFC 5322 §2.2; message/edit.py).
_NAME = frozenset(range(33, 127)) - {ord(":")}
_SPACE = frozenset(b" \t\r\x0b\x0c")  # what bytes.strip() removes, but the line end
_FOLD = frozenset(b" \t")  # a continuation line starts with one
# Longer than a line may be (RFC 5322 §2.1.1) without a ":": not a field name.
MAX_NAME = 998
_LF = ord("\n")
# A whole field name and its ":" within one chunk (the bytes of _NAME), matched at once;
# the byte loop below decides the rest (a name split between chunks, the body).
_FIELD_NAME = re.compile(rb"[!-9;-~]{1,%d}:" % MAX_NAME).match


class HeaderInserter:
    """Streams a message (CRLF lines) through, adding the header where docs/behaviour.md §7.2 says.

    ``Received:`` headers go first. Any other header goes just before the first line that
    ends the header section: a blank (empty or whitespace-only) line, or a line that is
    neither a header field (a name of printable characters, then ":") nor the continuation
    of one (it starts with a space or a tab), as message/edit.py reads the header; with
    neither, after the last line. Only the start of a line still undecided is held back
    (whitespace, or up to MAX_NAME bytes of a name), and the output never depends on how
    the input was split.
    """

    def __init__(self, header: bytes) -> None:
        self._header = header + CRLF
        self._prepend = header[:9].lower() == b"received:"
        self._done = False
        self._pending = bytearray()  # the current line so far, while it is undecided
        self._name = False  # the pending bytes are the start of a field name
        self._dirty = False  # the current line is a field or a continuation (emitted)
        self._fields = False  # a field was seen: a line starting with space continues it

    def feed(self, data: bytes) -> bytes:
        """Return the bytes to send now for ``data``."""
        if self._done:
            return data
        if self._prepend:
            self._done = True
            return self._header + data
        out = bytearray()
        pending = self._pending
        pos, n = 0, len(data)
        while pos < n:
            if self._dirty:  # the rest of a field's line goes as it is
                nl = data.find(b"\n", pos)
                if nl < 0:
                    out += data[pos:]
                    break
                out += data[pos : nl + 1]
                pos = nl + 1
                self._dirty = False
                continue
            if not pending:
                field = _FIELD_NAME(data, pos)
                if field is not None:
                    out += data[pos : field.end()]  # the rest of its line follows (_dirty)
                    pos = field.end()
                    self._fields = self._dirty = True
                    continue
            byte = data[pos]
            if self._name:
                if byte == 58:  # ":" ends a field name
                    self._fields = self._dirty = True
                elif byte not in _NAME or len(pending) >= MAX_NAME:
                    return self._insert(out, data[pos:])  # not a field: the body
            elif byte == _LF:
                return self._insert(out, data[pos:])  # a blank line
            elif byte not in _SPACE:
                if pending:  # after white space: a continuation, or the body
                    if pending[0] not in _FOLD or not self._fields:
                        return self._insert(out, data[pos:])
                    self._dirty = True
                elif byte in _NAME:
                    self._name = True
                else:
                    return self._insert(out, data[pos:])  # not a field: the body
            if self._dirty:
                out += pending
                pending.clear()
                self._name = False
            else:
                pending.append(byte)
                pos += 1
        return bytes(out)

    def _insert(self, out: bytearray, rest: bytes) -> bytes:
        """The header, then the held-back start of the current line and the rest."""
        out += self._header
        out += self._pending
        out += rest
        self._pending.clear()
        self._done = True
        return bytes(out)

    def finish(self) -> bytes:
        """Return what is left at the end of the message (the header, if still pending)."""
        if self._done:
            return b""
        if self._dirty:  # the last line, a field, had no newline: end it first
            self._done = True
            return CRLF + self._header
        # (a final partial line, whitespace or a name without ":", ends the header too)
        return self._insert(bytearray(), b"")
