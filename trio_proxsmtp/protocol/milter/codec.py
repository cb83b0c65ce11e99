"""The milter packet codec, both directions, sans-IO: framing (`packet`, `PacketDecoder`),
C strings, the one verdict↔response table, and every command and answer encoded and decoded.

A packet is a 4-byte big-endian length, then one command byte and its payload (the length
counts the command byte). Strings are NUL-terminated. The MTA (us) sends commands
(``SMFIC_*``, upper-case letters), the milter answers with responses (``SMFIR_*``).

Both directions are encoded and decoded here: the client (`MilterSession`, session.py) uses
the MTA side, the fake milter in ``trio_proxsmtp.testing`` the other. We wrote our own codec
instead of depending on ``kilter.protocol``: that package only models the *filter* side (its
state machine validates a filter's answers, not an MTA's), reads through a fixed-size buffer
of exported memoryviews that must be released in order, and has no packet-size cap; the
codec itself is small, and the MTA-side state machine (option negotiation, NO_*/NR_*/SKIP,
which response is legal when) is the part we needed anyway.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Mapping

import attrs

from trio_proxsmtp.protocol.milter.codes import (
    MAX_PACKET_SIZE,
    MacroStage,
    MilterActions,
    MilterCommand,
    MilterProtocolError,
    Proto,
    Response,
)
from trio_proxsmtp.protocol.milter.messages import (
    AddHeader,
    AddRecipient,
    ChangeHeader,
    ChangeSender,
    DeleteRecipient,
    InsertHeader,
    MilterAnswer,
    MilterVerdict,
    MilterVerdictKind,
    Negotiate,
    Progress,
    Quarantine,
    ReplaceBody,
)

__all__ = [
    "MtaCommand",
    "PacketDecoder",
    "decode_command",
    "decode_response",
    "encode_command",
    "encode_connect",
    "encode_macros",
    "encode_optneg",
    "encode_response",
    "packet",
]

_LENGTH = struct.Struct("!I")

# The one-byte answer for each verdict (a verdict with a reply text is SMFIR_REPLYCODE).
_VERDICT_RESPONSE = {
    MilterVerdictKind.CONTINUE: Response.CONTINUE,
    MilterVerdictKind.ACCEPT: Response.ACCEPT,
    MilterVerdictKind.REJECT: Response.REJECT,
    MilterVerdictKind.TEMPFAIL: Response.TEMPFAIL,
    MilterVerdictKind.DISCARD: Response.DISCARD,
    MilterVerdictKind.SKIP: Response.SKIP,
}
_RESPONSE_VERDICT = {response: kind for kind, response in _VERDICT_RESPONSE.items()}


# --- packets ---------------------------------------------------------------------------


def packet(code: bytes, payload: bytes = b"") -> bytes:
    """One packet: length, command byte, payload."""
    return _LENGTH.pack(len(payload) + 1) + code + payload


class PacketDecoder:
    """Splits a byte stream into (command byte, payload) packets, whatever the chunking."""

    def __init__(self, max_size: int = MAX_PACKET_SIZE) -> None:
        self._buffer = bytearray()
        self._max_size = max_size

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        """Add bytes; return the packets now complete. Raises MilterProtocolError."""
        self._buffer += data
        packets: list[tuple[bytes, bytes]] = []
        start = 0
        buffer = self._buffer
        while len(buffer) - start >= 4:
            (size,) = _LENGTH.unpack_from(buffer, start)
            if size == 0 or size > self._max_size:
                raise MilterProtocolError(f"milter packet length {size} out of range")
            if len(buffer) - start - 4 < size:
                break
            body = bytes(buffer[start + 4 : start + 4 + size])
            packets.append((body[:1], body[1:]))
            start += 4 + size
        del buffer[:start]
        return packets

    @property
    def pending(self) -> int:
        """Bytes held that are not yet a whole packet."""
        return len(self._buffer)


def _cstr(text: str) -> bytes:
    data = text.encode("utf-8", "surrogateescape")
    if b"\0" in data:
        raise ValueError("milter strings cannot contain NUL")
    return data + b"\0"


def _split_cstrings(payload: bytes, count: int | None = None) -> list[str]:
    """NUL-terminated strings; exactly ``count`` of them when given."""
    if payload and not payload.endswith(b"\0"):
        raise MilterProtocolError("milter string not NUL-terminated")
    parts = payload[:-1].split(b"\0") if payload else []
    if count is not None and len(parts) != count:
        raise MilterProtocolError(f"expected {count} strings, got {len(parts)}")
    return [p.decode("utf-8", "surrogateescape") for p in parts]


_OPTNEG = struct.Struct("!III")
_INDEX = struct.Struct("!I")
_PORT = struct.Struct("!H")


def encode_response(answer: MilterAnswer) -> bytes:
    """Encode a milter's answer (used by the fake milter)."""
    match answer:
        case MilterVerdict(kind=kind, reply=reply):
            if reply is not None:
                return packet(Response.REPLYCODE.value, _cstr(reply))
            return packet(_VERDICT_RESPONSE[kind].value)
        case Negotiate(version=v, actions=a, protocol=p, macros=macros):
            payload = _OPTNEG.pack(v, int(a), int(p))
            for stage, names in macros.items():
                payload += _INDEX.pack(int(stage)) + _cstr(" ".join(names))
            return packet(Response.OPTNEG.value, payload)
        case AddHeader(name=n, value=v):
            return packet(Response.ADDHEADER.value, _cstr(n) + _cstr(v))
        case InsertHeader(index=i, name=n, value=v):
            return packet(Response.INSHEADER.value, _INDEX.pack(i) + _cstr(n) + _cstr(v))
        case ChangeHeader(index=i, name=n, value=v):
            return packet(Response.CHGHEADER.value, _INDEX.pack(i) + _cstr(n) + _cstr(v))
        case ChangeSender(sender=s, args=args):
            return packet(Response.CHGFROM.value, _cstr(s) + (b"" if args is None else _cstr(args)))
        case AddRecipient(recipient=r, args=None):
            return packet(Response.ADDRCPT.value, _cstr(r))
        case AddRecipient(recipient=r, args=str(args)):
            return packet(Response.ADDRCPT_PAR.value, _cstr(r) + _cstr(args))
        case DeleteRecipient(recipient=r):
            return packet(Response.DELRCPT.value, _cstr(r))
        case ReplaceBody(chunk=chunk):
            return packet(Response.REPLBODY.value, chunk)
        case Quarantine(reason=reason):
            return packet(Response.QUARANTINE.value, _cstr(reason))
        case Progress():
            return packet(Response.PROGRESS.value)
    raise TypeError(f"not a milter answer: {answer!r}")  # pragma: no cover


def decode_response(code: bytes, payload: bytes) -> MilterAnswer:
    """Decode one packet from a milter. Raises MilterProtocolError."""
    try:
        response = Response(code)
    except ValueError:
        raise MilterProtocolError(f"unknown milter response {code!r}") from None
    kind = _RESPONSE_VERDICT.get(response)
    if kind is not None:
        if payload:
            raise MilterProtocolError(f"response {code!r} carries data")
        return MilterVerdict(kind)
    match response:
        case Response.REPLYCODE:
            (text,) = _split_cstrings(payload, 1)
            _check_reply(text)
            kind = MilterVerdictKind.TEMPFAIL if text[0] == "4" else MilterVerdictKind.REJECT
            return MilterVerdict(kind, text)
        case Response.OPTNEG:
            return _decode_optneg(payload, answer=True)
        case Response.ADDHEADER:
            name, value = _split_cstrings(payload, 2)
            return AddHeader(name, value)
        case Response.INSHEADER | Response.CHGHEADER:
            if len(payload) < 4:
                raise MilterProtocolError("header index missing")
            (index,) = _INDEX.unpack_from(payload)
            name, value = _split_cstrings(payload[4:], 2)
            if not name:
                raise MilterProtocolError("empty header name")
            cls = InsertHeader if response is Response.INSHEADER else ChangeHeader
            return cls(index, name, value)
        case Response.CHGFROM:
            parts = _split_cstrings(payload)
            if len(parts) not in (1, 2):
                raise MilterProtocolError("CHGFROM needs a sender and at most one argument string")
            return ChangeSender(parts[0], parts[1] if len(parts) == 2 else None)
        case Response.ADDRCPT:
            (rcpt,) = _split_cstrings(payload, 1)
            return AddRecipient(rcpt)
        case Response.ADDRCPT_PAR:
            parts = _split_cstrings(payload)
            if len(parts) not in (1, 2):
                raise MilterProtocolError("ADDRCPT_PAR needs a recipient and its arguments")
            return AddRecipient(parts[0], parts[1] if len(parts) == 2 else "")
        case Response.DELRCPT:
            (rcpt,) = _split_cstrings(payload, 1)
            return DeleteRecipient(rcpt)
        case Response.REPLBODY:
            return ReplaceBody(payload)
        case Response.QUARANTINE:
            (reason,) = _split_cstrings(payload, 1)
            return Quarantine(reason)
        case Response.PROGRESS:
            return Progress()
    raise MilterProtocolError(f"milter response {code!r} is not supported")


# An RFC 3463 enhanced status code at the start of a reply line's text.
_ENHANCED = re.compile(r"([245])\.[0-9]{1,3}\.[0-9]{1,3}(?: |$)")
# Control characters a reply line may not hold (TAB may): CR and LF above all, which would
# let a milter write reply lines of its own to the client.
_REPLY_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _check_reply(text: str) -> None:
    """SMFIR_REPLYCODE's text is one reply line, or lines joined by CRLF as libmilter's
    smfi_setmlreply sends them ("550-5.7.1 a\r\n550 5.7.1 b", nothing after the last):
    every line with the same 4xx/5xx code, "-" after it on every line but the last, a space
    (or nothing) on the last, no other CR, LF or control character, and an enhanced status
    code, where a line has one, of the reply code's class. Anything else is the milter's
    protocol error (docs/behaviour.md §6.5)."""
    lines = text.split("\r\n")
    code = lines[0][:3]
    if len(code) < 3 or not (code.isascii() and code.isdigit()) or code[0] not in "45":
        raise MilterProtocolError(f"milter reply is not a 4xx/5xx reply: {text!r}")
    for number, line in enumerate(lines, 1):
        if _REPLY_CONTROL.search(line):
            raise MilterProtocolError(f"milter reply has a control character: {text!r}")
        if line[:3] != code:
            raise MilterProtocolError(f"milter reply line {number} has another code: {text!r}")
        mark = line[3:4]
        if mark not in (("", " ") if number == len(lines) else ("-",)):
            raise MilterProtocolError(f"milter reply has a broken continuation: {text!r}")
        enhanced = _ENHANCED.match(line, 4)
        if enhanced is not None and enhanced.group(1) != code[0]:
            raise MilterProtocolError(
                f"milter reply's enhanced status code is not of its class: {text!r}"
            )


def _decode_optneg(payload: bytes, *, answer: bool) -> Negotiate:
    if len(payload) < _OPTNEG.size:
        raise MilterProtocolError("option negotiation too short")
    version, actions, protocol = _OPTNEG.unpack_from(payload)
    macros: dict[MacroStage, tuple[str, ...]] = {}
    rest = payload[_OPTNEG.size :]
    while answer and rest:
        if len(rest) < 4:
            raise MilterProtocolError("truncated macro list in option negotiation")
        (number,) = _INDEX.unpack_from(rest)
        end = rest.find(b"\0", 4)
        if end < 0:
            raise MilterProtocolError("macro list not NUL-terminated")
        try:
            stage = MacroStage(number)
        except ValueError:
            raise MilterProtocolError(f"unknown macro stage {number}") from None
        names = rest[4:end].decode("utf-8", "surrogateescape")
        macros[stage] = tuple(names.split())
        rest = rest[end + 1 :]
    return Negotiate(version, MilterActions(actions & 0xFFFFFFFF), Proto(protocol), macros)


# MTA commands, as the fake milter sees them.
@attrs.frozen
class MtaCommand:
    """A decoded SMFIC_* packet: ``args`` are its strings, ``data`` its raw bytes."""

    command: MilterCommand
    args: tuple[str, ...] = ()
    data: bytes = b""
    macros: Mapping[str, str] = attrs.field(factory=dict)  # SMFIC_MACRO only
    macro_for: bytes = b""  # SMFIC_MACRO only: the command the macros are for
    port: int = 0  # SMFIC_CONNECT only
    family: str = ""  # SMFIC_CONNECT only: "4", "6", "L" or "U"
    negotiate: Negotiate | None = None  # SMFIC_OPTNEG only


def encode_command(command: MilterCommand, *args: str, data: bytes = b"") -> bytes:
    """An SMFIC_* packet whose payload is ``args`` as C strings, then ``data``."""
    return packet(command.value, b"".join(_cstr(a) for a in args) + data)


def decode_command(code: bytes, payload: bytes) -> MtaCommand:
    """Decode one packet from an MTA (for the fake milter). Raises MilterProtocolError."""
    try:
        command = MilterCommand(code)
    except ValueError:
        raise MilterProtocolError(f"unknown milter command {code!r}") from None
    match command:
        case MilterCommand.OPTNEG:
            return MtaCommand(command, negotiate=_decode_optneg(payload, answer=False))
        case MilterCommand.MACRO:
            if not payload:
                raise MilterProtocolError("macro packet without a command")
            parts = _split_cstrings(payload[1:])
            if len(parts) % 2:
                raise MilterProtocolError("macro packet with a name but no value")
            macros = dict(zip(parts[0::2], parts[1::2], strict=True))
            return MtaCommand(command, macros=macros, macro_for=payload[:1])
        case MilterCommand.CONNECT:
            end = payload.find(b"\0")
            if end < 0 or end + 1 >= len(payload):
                raise MilterProtocolError("truncated connect packet")
            host = payload[:end].decode("utf-8", "surrogateescape")
            family = chr(payload[end + 1])
            rest = payload[end + 2 :]
            if family == "U":
                return MtaCommand(command, (host,), family=family)
            if len(rest) < 2:
                raise MilterProtocolError("truncated connect packet")
            (port,) = _PORT.unpack_from(rest)
            (address,) = _split_cstrings(rest[2:], 1)
            return MtaCommand(command, (host, address), port=port, family=family)
        case MilterCommand.BODY | MilterCommand.EOM | MilterCommand.UNKNOWN:
            return MtaCommand(command, data=payload)
        case MilterCommand.HEADER:
            return MtaCommand(command, tuple(_split_cstrings(payload, 2)))
        case _:
            return MtaCommand(command, tuple(_split_cstrings(payload)))


def encode_connect(hostname: str, family: str, port: int, address: str) -> bytes:
    """SMFIC_CONNECT; family is "4", "6", "L" (unix socket) or "U" (unknown)."""
    payload = _cstr(hostname) + family.encode("ascii")
    if family != "U":
        payload += _PORT.pack(port) + _cstr(address)
    return packet(MilterCommand.CONNECT.value, payload)


def encode_macros(command: MilterCommand, macros: Iterable[tuple[str, str]]) -> bytes:
    payload = command.value + b"".join(_cstr(n) + _cstr(v) for n, v in macros)
    return packet(MilterCommand.MACRO.value, payload)


def encode_optneg(version: int, actions: MilterActions, protocol: Proto) -> bytes:
    return packet(MilterCommand.OPTNEG.value, _OPTNEG.pack(version, int(actions), int(protocol)))
