"""The ``Header`` option (docs/behaviour.md §7): expand the template, insert it into a message.

Pure: no I/O. Differences from proxsmtpd 1.10, on purpose:

* ``%d`` is an RFC 5322 date with a correct ``+HHMM`` offset (1.10 printed ``asctime`` and
  wrote the offset minutes as seconds, B9).
* A message with no blank line gets the header appended after its last line (1.10 silently
  dropped the header).
* The header is CRLF-clean: a ``\\n`` or ``\\r`` in the template that is not part of a CRLF
  becomes CRLF (docs/behaviour.md §5.1), and trailing line breaks are removed so the header
  can never end the header block early.
"""

from __future__ import annotations

import datetime

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


class HeaderInserter:
    """Streams a message (CRLF lines) through, adding the header where docs/behaviour.md §7.2 says.

    ``Received:`` headers go first. Any other header goes just before the first blank
    (empty or whitespace-only) line, or, with no blank line, after the last line. Only a
    partial line that is still all whitespace is held back, so memory stays bounded by
    what a peer could make whitespace-only, and the output never depends on how the input
    was split.
    """

    def __init__(self, header: bytes) -> None:
        self._header = header + CRLF
        self._prepend = header[:9].lower() == b"received:"
        self._done = False
        self._pending = bytearray()  # the current line so far, while it is all whitespace
        self._dirty = False  # the current line has a non-whitespace byte (already emitted)

    def feed(self, data: bytes) -> bytes:
        """Return the bytes to send now for ``data``."""
        if self._done:
            return data
        if self._prepend:
            self._done = True
            return self._header + data
        out = bytearray()
        pos, n = 0, len(data)
        while pos < n:
            nl = data.find(b"\n", pos)
            end = n if nl < 0 else nl + 1
            segment = data[pos:end]
            if self._dirty:
                out += segment
            elif segment.strip():
                out += self._pending
                out += segment
                self._pending.clear()
                self._dirty = True
            else:
                self._pending += segment
            pos = end
            if nl >= 0:
                if not self._dirty:  # a complete blank line: the header goes before it
                    out += self._header
                    out += self._pending
                    self._pending.clear()
                    self._done = True
                    out += data[pos:]
                    break
                self._dirty = False
        return bytes(out)

    def finish(self) -> bytes:
        """Return what is left at the end of the message (the header, if still pending)."""
        if self._done:
            return b""
        self._done = True
        if self._pending:  # a final whitespace-only line without a newline is blank too
            tail = self._header + bytes(self._pending)
            self._pending.clear()
            return tail
        if self._dirty:  # the last line had no newline: end it first
            return CRLF + self._header
        return self._header
