"""The SPAMC protocol, version 1.5, as SpamAssassin's spamc speaks it to spamd.

We send ``HEADERS``: spamd answers with the checked message's header section only, from
which we keep the ``X-Spam-*`` fields it added, and the ``Spam:`` line with the score and
the threshold.  One request per connection: spamd closes after its answer.
"""

from __future__ import annotations

import re

import attrs

from trio_proxsmtp.protocol.scanners.errors import ScannerProtocolError

__all__ = [
    "SpamdAnswer",
    "parse_spamd_answer",
    "spam_headers",
    "spamc_request",
]

VERSION = "1.5"
_STATUS = re.compile(rb"SPAMD/(\d+)\.(\d+) +(\d+) +([^\r\n]*)")
_SPAM = re.compile(r"(True|False|Yes|No) *; *(-?[0-9.]+) */ *(-?[0-9.]+)", re.IGNORECASE)
_FIELD_NAME = re.compile(rb"[!-9;-~]+:")


def spamc_request(size: int, user: str | None = None) -> bytes:
    """The request's head; the message's `size` bytes follow it."""
    lines = [f"HEADERS SPAMC/{VERSION}", f"Content-length: {size}"]
    if user:
        if any(c in user for c in "\r\n") or not user.isprintable():
            raise ValueError(f"invalid spamd user {user!r}")
        lines.append(f"User: {user}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


@attrs.frozen
class SpamdAnswer:
    """spamd's answer: its verdict (`spam`, `score`, `threshold`) and the header fields it
    added (``X-Spam-*``, each field with its folded lines, ending in CRLF)."""

    spam: bool
    score: float
    threshold: float
    headers: tuple[bytes, ...] = ()

    @property
    def note(self) -> str:
        """What the summary line says: ``7.2/5.0``."""
        return f"{self.score or 0.0:.1f}/{self.threshold:.1f}"  # never "-0.0"


def parse_spamd_answer(data: bytes) -> SpamdAnswer:
    """spamd's whole answer (it closes the connection after it); raises
    `ScannerProtocolError` for an error status, a missing ``Spam:`` line or garbage."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        raise ScannerProtocolError("spamd: the answer ended before its headers did")
    lines = head.split(b"\r\n")
    status = _STATUS.fullmatch(lines[0])
    if status is None:
        raise ScannerProtocolError(f"spamd: not a SPAMD answer: {_show(lines[0])}")
    code = int(status.group(3))
    if code != 0:
        raise ScannerProtocolError(f"spamd: error {code} {_show(status.group(4))}")
    fields: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            raise ScannerProtocolError(f"spamd: bad header line {_show(line)}")
        fields[name.strip().decode("ascii", "replace").lower()] = value.strip().decode(
            "ascii", "replace"
        )
    spam_field = fields.get("spam")
    match = _SPAM.fullmatch(spam_field) if spam_field is not None else None
    if match is None:
        raise ScannerProtocolError(f"spamd: no readable Spam: line ({spam_field!r})")
    length = fields.get("content-length")
    if length is not None and (not length.isdigit() or int(length) != len(body)):
        raise ScannerProtocolError(
            f"spamd: the answer has {len(body)} bytes, not its Content-length {length}"
        )
    return SpamdAnswer(
        spam=match.group(1).lower() in ("true", "yes"),
        score=float(match.group(2)),
        threshold=float(match.group(3)),
        headers=spam_headers(body),
    )


def spam_headers(section: bytes) -> tuple[bytes, ...]:
    """The ``X-Spam-*`` fields of a header section (up to its blank line), each with its
    continuation lines, line ends made CRLF."""
    fields: list[list[bytes]] = []
    keep = False
    for line in section.splitlines():
        if not line.strip():
            break
        if line[:1] in (b" ", b"\t"):
            if keep and fields:
                fields[-1].append(line)
            continue
        keep = bool(_FIELD_NAME.match(line)) and line.lower().startswith(b"x-spam-")
        if keep:
            fields.append([line])
    return tuple(b"".join(part + b"\r\n" for part in field) for field in fields)


def _show(data: bytes) -> str:
    return repr(data[:80].decode("ascii", "replace"))
