"""The DATA stream in both directions, chunk by chunk, with bytes methods only.

`DataReceiver` turns the client's wire bytes into the message: it finds the terminator
across chunk boundaries, removes transparency dots (RFC 5321 §4.5.2) and turns every bare
CR or LF into CRLF.  `DataSender` does the reverse for the upstream.  Together they fix B6
(the DATA command counts as a line boundary, so an empty first message ends) and B7 (the
filter sees the message un-stuffed, the upstream gets it re-stuffed with a final CRLF), and
no byte sequence a client or filter sends can end the upstream's DATA early (smuggling).

Only a literal CRLF "." CRLF ends DATA: a bare-LF ".\\n" does not, as in proxsmtpd 1.10.
Line-ending normalisation means the message is not byte-exact for bare CR/LF; every other
byte (NUL, 8-bit) passes unchanged.  `DataSender` also gives a transparency dot to a line
whose first byte other than NUL is a dot, so that a next server that drops NULs never sees
a lone "." (docs/behaviour.md §5.1); a conforming one removes that dot as any other.
"""

from __future__ import annotations

import re

from trio_proxsmtp.protocol.errors import LocalProtocolError

__all__ = ["DataReceiver", "DataSender", "LineEnds", "stuff", "unstuff"]

_CRLF = b"\r\n"
_TERMINATOR = b"\r\n.\r\n"
_LINE_DOT = b"\r\n."
# The same, searched by `re` (a scan for its first byte: about 2.5x faster than
# `bytes.find` for mail text, whose letters defeat find's skip table).
_FIND_LINE_DOT = re.compile(re.escape(_LINE_DOT)).search
# Suffixes that might be the start of a terminator (or a CR whose LF is still to come),
# longest first: they are held back until the next chunk decides.
_HELD_SUFFIXES = (b"\r\n.\r", b"\r\n.", b"\r\n", b"\r")
# Dot lines are found one by one with bytes.find (typical mail has few); past this many in
# one chunk (one per 512 bytes, or 32), bytes.replace over the chunk is cheaper than a loop.
_MIN_SPLICES = 32
# A line whose first byte other than NUL is a dot (its NULs in group 1): it gets a
# transparency dot before its NULs.  NULs at the end of a fed chunk that start a line are
# held back (up to _MAX_HELD_NULS, then a dot after them is doubled in place instead).
_NUL_DOT_LINE = re.compile(rb"\r\n(\x00+\.)")
_MAX_HELD_NULS = 1024
_BYTES_PER_SPLICE = 512
# A CR that no LF follows, an LF that no CR precedes (each pattern starts with its byte).
_BARE_CR = re.compile(rb"\r(?!\n)")
_BARE_LF = re.compile(rb"\n(?<!\r\n)")
_REGEX_LINE = 32


def _max_splices(size: int) -> int:
    return max(_MIN_SPLICES, size // _BYTES_PER_SPLICE)


def _is_clean(data: bytes) -> bool:
    """True when every CR and LF in `data` is part of a CRLF pair.

    Lines of _REGEX_LINE bytes or more on average (most mail): a search for a bare CR and
    one for a bare LF, each a fast scan for its byte (about 30 % less than the counts per
    MB); their cost grows with the number of line ends, so shorter lines are counted."""
    lf = data.count(b"\n")
    if len(data) >= _REGEX_LINE * lf:
        return _BARE_CR.search(data) is None and _BARE_LF.search(data) is None
    crlf = data.count(b"\r\n")
    return lf == crlf and data.count(b"\r") == crlf


def _normalise_line_ends(data: bytes) -> bytes:
    """Every CRLF, bare CR and bare LF becomes CRLF (a CR at the very end counts as bare)."""
    if _is_clean(data):
        return data
    return _to_crlf(data)


def _to_crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


class DataReceiver:
    """Client wire bytes after the 354 -> message bytes (un-stuffed, CRLF-normalised)."""

    def __init__(self) -> None:
        # The DATA command line ended the previous line (B6): a leading "." is stuffing
        # and ".\r\n" at once is an empty message.
        self._after_crlf = True
        self._held = b""
        self._remaining = b""
        self._done = False
        self._size = 0
        self._dot_lines = False

    @property
    def dot_lines(self) -> bool:
        """Whether a line of the message returned so far may start with a dot: False only
        when no transparency dot was removed and no line end normalised (then no line of
        it does; `DataSender(dot_lines=False)` need not look for one)."""
        return self._dot_lines

    @property
    def done(self) -> bool:
        """True once the terminator has been seen."""
        return self._done

    @property
    def size(self) -> int:
        """Message bytes returned so far."""
        return self._size

    def feed(self, data: bytes) -> bytes:
        """Consume client bytes; return the message bytes that are now certain."""
        if self._done:
            raise LocalProtocolError("DataReceiver fed after the end of data")
        work = self._held + data if self._held else data
        start = 0
        if self._after_crlf:
            # The line boundary before `work` was already emitted: look at its first line.
            if work.startswith(b".\r\n"):
                return self._finish(work, 0, 0, [], 3)
            if b".\r\n".startswith(work):
                self._held = work  # "", "." or ".\r": too early to tell
                return b""
            if work.startswith(b"."):
                start = 1  # a transparency dot
                self._dot_lines = True
        # Every "\r\n." is either the terminator or a line's transparency dot.
        dots: list[int] | None = []
        max_dots = _max_splices(len(work))
        pos = start
        while True:
            match = _FIND_LINE_DOT(work, pos)
            if match is None:
                break
            found = match.start()
            if work.startswith(_CRLF, found + 3):
                return self._finish(work, start, found + 2, dots, found + 5)
            if dots is not None and len(dots) >= max_dots:
                # Many dot lines: search for the terminator only, replace() does the rest.
                dots = None
                found = work.find(_TERMINATOR, pos)
                if found >= 0:
                    return self._finish(work, start, found + 2, dots, found + 5)
                break
            if dots is not None:
                dots.append(found + 2)
            pos = found + 3
        cut = len(work)
        for suffix in _HELD_SUFFIXES:
            if work.endswith(suffix):
                cut -= len(suffix)
                break
        cut = max(cut, start)
        self._held = work[cut:]
        if dots is not None:
            dots = [dot for dot in dots if dot < cut]
        return self._emit(work, start, cut, dots)

    def take_remaining(self) -> bytes:
        """Client bytes after the terminator (pipelined commands), handed over once."""
        remaining, self._remaining = self._remaining, b""
        return remaining

    def _finish(
        self, work: bytes, start: int, cut: int, dots: list[int] | None, rest: int
    ) -> bytes:
        """The terminator ends at `rest`; the message's last bytes are work[start:cut]."""
        self._done = True
        self._held = b""
        self._remaining = work[rest:]
        return self._emit(work, start, cut, dots)

    def _emit(self, work: bytes, start: int, cut: int, dots: list[int] | None) -> bytes:
        """work[start:cut] without the dots at `dots` (None: at every CRLF "."), normalised."""
        if cut <= start:
            return b""
        self._after_crlf = work.endswith(_CRLF, 0, cut)
        if dots is None:
            region = work[start:cut].replace(_LINE_DOT, _CRLF)
            self._dot_lines = True
        elif dots:
            # cut the region at each dot and drop the dot from the piece it starts
            pieces = [work[start : dots[0]]]
            pieces += [work[a + 1 : b] for a, b in zip(dots, [*dots[1:], cut], strict=True)]
            region = b"".join(pieces)
            self._dot_lines = True
        else:
            region = work[start:cut]
        if _is_clean(region):
            out = region
        else:
            out = _to_crlf(region)
            self._dot_lines = True  # a bare line end before a dot makes a dot line
        self._size += len(out)
        return out


class DataSender:
    """Message bytes -> upstream wire bytes: CRLF-normalised and dot-stuffed.

    `clean`: the caller vouches that every CR and LF it feeds is part of a CRLF pair (a
    `DataReceiver`'s output, as spooled): the line-end check is skipped, three
    `bytes.count` passes over every chunk (about 2 ms per MB here, a third of a large
    message's CPU).  A bare line end fed anyway goes out as it is.  With `clean` only,
    `dot_lines=False`: the caller vouches that no line starts with a dot either (that
    `DataReceiver`'s `dot_lines`): the search for them is skipped too (about 0.6 ms per
    MB).  Lines whose first byte other than NUL is a dot are still found."""

    def __init__(self, *, clean: bool = False, dot_lines: bool = True) -> None:
        self._clean = clean
        self._dot_lines = dot_lines or not clean
        self._at_line_start = True
        self._held_cr = False
        self._held_nuls = 0  # NULs that start a line, held until the next byte decides
        self._after_nuls = False  # past the hold: the wire ends with a line start and NULs
        self._finished = False

    def feed(self, data: bytes) -> bytes:
        """Consume message bytes; return wire bytes (a trailing CR is held for its LF)."""
        if self._finished:
            raise LocalProtocolError("DataSender fed after finish()")
        if self._held_cr:
            data = b"\r" + data
        elif self._held_nuls:
            data = b"\x00" * self._held_nuls + data
            self._held_nuls = 0
        self._held_cr = data.endswith(b"\r")
        if self._held_cr:
            data = data[:-1]
        elif data.endswith(b"\x00"):
            self._hold_nuls(data)
            if self._held_nuls:
                data = data[: -self._held_nuls]
        if not data:
            return b""
        return self._encode(data)

    def _hold_nuls(self, data: bytes) -> None:
        """Hold the NULs that end `data` if they start a line: a dot may follow."""
        text = data.rstrip(b"\x00")
        nuls = len(data) - len(text)
        at_line_start = text.endswith((b"\n", b"\r")) if text else self._at_line_start
        if at_line_start and nuls <= _MAX_HELD_NULS:
            self._held_nuls = nuls

    def finish(self) -> bytes:
        """The end of the message: a CRLF if it did not end with one, then ".\\r\\n"."""
        if self._finished:
            raise LocalProtocolError("DataSender finished twice")
        self._finished = True
        out = b""
        if self._held_cr:
            self._held_cr = False
            out = self._encode(b"\r\n")  # a final bare CR is a line end
        elif self._held_nuls:
            out = self._encode(b"\x00" * self._held_nuls)  # no dot came: a line of NULs
            self._held_nuls = 0
        if not self._at_line_start:
            out += _CRLF
        return out + b".\r\n"

    def _encode(self, data: bytes) -> bytes:
        """Normalise `data` (no trailing CR) and double every dot that starts a line."""
        wire = data if self._clean else _normalise_line_ends(data)
        at_line_start = self._at_line_start
        if self._dot_lines:
            wire = self._stuffed_dots(wire)
        else:
            self._at_line_start = wire.endswith(b"\n")
        if self._after_nuls or b"\x00" in wire:
            wire = self._stuffed_nul_dots(wire, at_line_start)
        return wire

    def _stuffed_dots(self, wire: bytes) -> bytes:
        """`wire` with every dot that starts a line doubled."""
        pieces = []
        max_pieces = _max_splices(len(wire))
        pos = 0
        if self._at_line_start and wire.startswith(b"."):
            pieces.append(b".")
        while True:
            match = _FIND_LINE_DOT(wire, pos)
            if match is None:
                break
            found = match.start()
            if len(pieces) >= max_pieces:
                pieces.append(wire[pos:].replace(_LINE_DOT, b"\r\n.."))
                pos = len(wire)
                break
            pieces.append(wire[pos : found + 3])
            pos = found + 2  # the dot is emitted again with the next piece
        self._at_line_start = wire.endswith(b"\n")
        if not pieces:
            return wire
        pieces.append(wire[pos:])
        return b"".join(pieces)

    def _stuffed_nul_dots(self, wire: bytes, at_line_start: bool) -> bytes:
        """A transparency dot for each line of `wire` whose first byte other than NUL is a
        dot (docs/behaviour.md §5.1): a next server that drops NULs would take ``\\0.``
        for the end of data.  (`wire` is already dot-stuffed: such a line's dot was not.)"""
        rest = wire.lstrip(b"\x00")
        if rest.startswith(b"."):
            if self._after_nuls:  # its NULs went out already: double its dot instead
                nuls = len(wire) - len(rest)
                wire = wire[:nuls] + b"." + wire[nuls:]
            elif at_line_start and len(rest) < len(wire):
                wire = b"." + wire
        if b"\r\n\x00" in wire:
            wire = _NUL_DOT_LINE.sub(rb"\r\n.\1", wire)
        # More NULs than the hold takes, at a line start: the next dot is doubled in place.
        text = wire.rstrip(b"\x00")
        if len(text) == len(wire):
            self._after_nuls = False
        elif text:
            self._after_nuls = text.endswith(b"\n")
        else:  # NULs only: still at the start of the line if it was
            self._after_nuls = self._after_nuls or at_line_start
        return wire


class LineEnds:
    """Message bytes -> the same bytes with every bare CR or LF made CRLF, chunk by chunk
    (a trailing CR is held for its LF): for the BDAT replay, which has no stuffing but
    must not carry a bare line end either (docs/behaviour.md §5.1)."""

    def __init__(self) -> None:
        self._held_cr = False

    def feed(self, data: bytes) -> bytes:
        if self._held_cr:
            data = b"\r" + data
        self._held_cr = data.endswith(b"\r")
        return _normalise_line_ends(data[:-1] if self._held_cr else data)

    def finish(self) -> bytes:
        """What is left at the end: a final bare CR, as a line end."""
        held, self._held_cr = self._held_cr, False
        return _CRLF if held else b""


def stuff(message: bytes) -> bytes:
    """The whole wire form of `message`, terminator included."""
    sender = DataSender()
    return sender.feed(message) + sender.finish()


def unstuff(wire: bytes) -> bytes:
    """The message carried by `wire`, which must contain the terminator."""
    receiver = DataReceiver()
    message = receiver.feed(wire)
    if not receiver.done:
        raise ValueError("no end-of-data terminator in wire data")
    return message
