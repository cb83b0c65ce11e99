"""A message as milters see and edit it: parsed header fields, a body left where it is.

The header section is read into memory (it is small); the body is never copied: an
`EditedMessage` reads it again from its source (the spool) each time it is iterated, from
the offset where the headers end, unless a milter replaced it. Modifications are applied
in the order a milter sent them, with the milter protocol's rules:

- ``AddHeader`` appends after the last header field;
- ``InsertHeader(index)`` puts the field before the ``index``-th field (0: first);
- ``ChangeHeader(index, name, value)`` changes the ``index``-th (1-based) field of that name
  (case-insensitive); an empty value deletes it; a missing one is added, as Sendmail does;
- ``ReplaceBody`` pieces are the new body, in order;
- ``ChangeSender`` / ``AddRecipient`` / ``DeleteRecipient`` change the envelope;
- ``Quarantine`` is kept as a header field ``X-Quarantine-Reason`` on the delivered message:
  this proxy has no queue to hold mail in, and a temporary failure would only make the
  client retry the same message until it bounces; the next server can file it aside.

Messages are bytes with CRLF line ends. Header values go to milters without the space after
the colon and with folded lines joined by LF (as Sendmail and Postfix send them); values from
milters are written back with CRLF.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import attrs

from trio_proxsmtp.protocol.milter.messages import (
    AddHeader,
    AddRecipient,
    ChangeHeader,
    ChangeSender,
    DeleteRecipient,
    InsertHeader,
    Modification,
    Quarantine,
    ReplaceBody,
)

__all__ = [
    "QUARANTINE_HEADER",
    "EditedMessage",
    "HeaderField",
    "MessageEditError",
    "MilterEnvelope",
    "Recipient",
    "apply_modifications",
    "bare_address",
    "is_field_start",
    "read_message",
]

QUARANTINE_HEADER = "X-Quarantine-Reason"
# Past this, the rest is treated as body: a header section is never held whole if it is huge.
MAX_HEADER_SECTION = 1024 * 1024


class MessageEditError(ValueError):
    """A modification that cannot be applied (bad header name or value)."""


@attrs.frozen
class HeaderField:
    """One header field: its name and its raw bytes (``Name: value\\r\\n``, folds kept)."""

    name: str
    raw: bytes

    @classmethod
    def make(cls, name: str, value: str) -> HeaderField:
        """A field from a milter's name and value (value without the leading space).

        Every line break of the value (CRLF, bare CR or bare LF) is a fold: CRLF, and a
        space before a continuation that has no leading white space; empty lines are
        dropped, so a value can neither end the header section nor start a field of its
        own (docs/behaviour.md §5.1)."""
        if not name or any(c in name for c in ": \t\r\n") or not name.isascii():
            raise MessageEditError(f"invalid header name {name!r}")
        text = value
        if "\r" in value or "\n" in value:
            first, *rest = value.replace("\r\n", "\n").replace("\r", "\n").split("\n")
            folds = [line if line[:1] in (" ", "\t") else " " + line for line in rest]
            text = "\r\n".join([first, *(line for line in folds if line.strip())])
        raw = f"{name}: {text}\r\n".encode("utf-8", "surrogateescape")
        return cls(name, raw)

    @property
    def value(self) -> str:
        """The value as milters get it: no leading space, folds as LF, no final CRLF."""
        text = self.raw.decode("utf-8", "surrogateescape")
        value = text.split(":", 1)[1] if ":" in text else ""
        if value.startswith(" "):
            value = value[1:]
        if value.endswith("\r\n"):
            value = value[:-2]
        return value.replace("\r\n", "\n")


@attrs.frozen
class Recipient:
    address: str  # without angle brackets
    args: tuple[str, ...] = ()


@attrs.frozen
class MilterEnvelope:
    """The SMTP envelope a message travels with, as the milters see and change it."""

    sender: str  # without angle brackets; "" is the null sender
    recipients: tuple[Recipient, ...]
    sender_args: tuple[str, ...] = ()


def bare_address(address: str) -> str:
    """``<a@b>`` → ``a@b`` (milters send both forms)."""
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        return address[1:-1]
    return address


@attrs.frozen
class EditedMessage:
    """Headers in memory plus a body that is read again from its source on each iteration.

    ``body_source`` yields the *original* message bytes; the first ``body_offset`` of them
    are the original header section and are skipped. ``body`` (when not None) is a
    replacement body.
    """

    headers: tuple[HeaderField, ...]
    body_source: Callable[[], Iterable[bytes]]
    body_offset: int
    separator: bytes = b"\r\n"  # the blank line after the headers ("" if there was none)
    body: tuple[bytes, ...] | None = None
    quarantine: str | None = None

    def header_bytes(self) -> bytes:
        return b"".join(h.raw for h in self.headers) + self.separator

    def body_chunks(self) -> Iterator[bytes]:
        """The body, piece by piece, without loading it whole."""
        if self.body is not None:
            yield from (c for c in self.body if c)
            return
        skip = self.body_offset
        for chunk in self.body_source():
            if skip >= len(chunk):
                skip -= len(chunk)
                continue
            yield chunk[skip:] if skip else chunk
            skip = 0

    def chunks(self) -> Iterator[bytes]:
        """The whole message, for the next milter or for the upstream."""
        yield self.header_bytes()
        yield from self.body_chunks()


def is_field_start(line: bytes) -> bool:
    """A header field's first line: a name of printable characters, then ":"."""
    colon = line.find(b":")
    if colon <= 0:
        return False
    name = line[:colon]
    return all(33 <= b <= 126 for b in name)


def read_message(source: Callable[[], Iterable[bytes]]) -> EditedMessage:
    """Parse the header section of the message ``source()`` yields (CRLF line ends)."""
    head = bytearray()
    end = -1
    for chunk in source():
        start = max(0, len(head) - 3)
        head += chunk
        if head.startswith(b"\r\n"):
            end = 0
            break
        end = head.find(b"\r\n\r\n", start)
        if end >= 0 or len(head) >= MAX_HEADER_SECTION:
            break
    headers: list[HeaderField] = []
    if end == 0:
        return EditedMessage((), source, 2)
    section = bytes(head[: end + 2]) if end > 0 else bytes(head)
    lines = section.split(b"\r\n")
    if lines and lines[-1] == b"":
        lines.pop()
    offset = 0
    current: list[bytes] = []
    current_name = ""
    stopped = False
    for line in lines:
        if current and line[:1] in (b" ", b"\t"):
            current.append(line)
            continue
        if current:
            raw = b"\r\n".join(current) + b"\r\n"
            headers.append(HeaderField(current_name, raw))
            offset += len(raw)
            current = []
        if not is_field_start(line):
            stopped = True  # not a header: the body starts here, without a blank line
            break
        current = [line]
        current_name = line.split(b":", 1)[0].decode("utf-8", "surrogateescape")
    if current:
        # (a message ending inside its last header line gets the CRLF it lacked)
        raw = b"\r\n".join(current) + b"\r\n"
        headers.append(HeaderField(current_name, raw))
        offset += len(raw)
    if end > 0 and not stopped:
        return EditedMessage(tuple(headers), source, offset + 2)
    return EditedMessage(tuple(headers), source, offset, separator=b"")


def _change_header(
    headers: list[HeaderField], index: int, name: str, value: str
) -> list[HeaderField]:
    seen = 0
    for position, field in enumerate(headers):
        if field.name.lower() == name.lower():
            seen += 1
            if seen == max(index, 1):
                if value:
                    headers[position] = HeaderField.make(field.name, value)
                else:
                    del headers[position]
                return headers
    if value:
        headers.append(HeaderField.make(name, value))
    return headers


def apply_modifications(
    message: EditedMessage, envelope: MilterEnvelope, modifications: Sequence[Modification]
) -> tuple[EditedMessage, MilterEnvelope]:
    """One milter's end-of-message modifications, in the order it sent them."""
    headers = list(message.headers)
    body: list[bytes] | None = None
    sender, sender_args = envelope.sender, envelope.sender_args
    recipients = list(envelope.recipients)
    quarantine = message.quarantine
    separator = message.separator
    for mod in modifications:
        match mod:
            case AddHeader(name=name, value=value):
                headers.append(HeaderField.make(name, value))
            case InsertHeader(index=index, name=name, value=value):
                headers.insert(min(index, len(headers)), HeaderField.make(name, value))
            case ChangeHeader(index=index, name=name, value=value):
                headers = _change_header(headers, index, name, value)
            case ReplaceBody(chunk=chunk):
                if body is None:
                    body = []
                body.append(chunk)
            case ChangeSender(sender=new, args=args):
                sender = bare_address(new)
                sender_args = tuple(args.split()) if args else ()
            case AddRecipient(recipient=rcpt, args=args):
                address = bare_address(rcpt)
                if all(r.address.lower() != address.lower() for r in recipients):
                    recipients.append(Recipient(address, tuple(args.split()) if args else ()))
            case DeleteRecipient(recipient=rcpt):
                address = bare_address(rcpt).lower()
                recipients = [r for r in recipients if r.address.lower() != address]
            case Quarantine(reason=reason):
                quarantine = reason or "quarantined by a milter"
                headers = [h for h in headers if h.name.lower() != QUARANTINE_HEADER.lower()]
                headers.append(HeaderField.make(QUARANTINE_HEADER, quarantine))
    if body is not None:
        separator = b"\r\n"  # a new body always follows a blank line
    edited = attrs.evolve(
        message,
        headers=tuple(headers),
        body=tuple(_normalise_body(body)) if body is not None else message.body,
        separator=separator,
        quarantine=quarantine,
    )
    return edited, MilterEnvelope(sender, tuple(recipients), sender_args)


def _normalise_body(pieces: list[bytes]) -> list[bytes]:
    """A replacement body with CRLF line ends (milters may send bare LF)."""
    data = b"".join(pieces)
    if data.count(b"\n") != data.count(b"\r\n") or data.count(b"\r") != data.count(b"\r\n"):
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    return [data]
