"""The milter protocol (Sendmail/Postfix mail filters, version 6), sans-IO.

A packet is a 4-byte big-endian length, then one command byte and its payload (the length
counts the command byte). Strings are NUL-terminated. The MTA (us) sends commands
(``SMFIC_*``, upper-case letters), the milter answers with responses (``SMFIR_*``).

Both directions are encoded and decoded here: the client (`MilterSession`) uses the MTA side,
the fake milter in ``trio_proxsmtp.testing`` the other. We wrote our own codec instead of
depending on ``kilter.protocol``: that package only models the *filter* side (its state
machine validates a filter's answers, not an MTA's), reads through a fixed-size buffer of
exported memoryviews that must be released in order, and has no packet-size cap; the codec
itself is small, and the MTA-side state machine (option negotiation, NO_*/NR_*/SKIP, which
response is legal when) is the part we needed anyway.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable, Mapping, Sequence

import attrs

from trio_proxsmtp.protocol.errors import LocalProtocolError

__all__ = [
    "ALL_ACTIONS",
    "BODY_CHUNK_SIZE",
    "MAX_PACKET_SIZE",
    "NO_REPLY",
    "OFFERED_PROTOCOL",
    "STAGE_COMMAND",
    "VERSION",
    "Action",
    "AddHeader",
    "AddRecipient",
    "ChangeHeader",
    "ChangeSender",
    "Command",
    "DeleteRecipient",
    "InsertHeader",
    "MacroStage",
    "MilterProtocolError",
    "MilterSession",
    "Modification",
    "Negotiate",
    "PacketDecoder",
    "Proto",
    "Quarantine",
    "ReplaceBody",
    "Response",
    "Stage",
    "Verdict",
    "VerdictKind",
    "decode_command",
    "decode_response",
    "encode_command",
    "encode_response",
    "packet",
]

VERSION = 6
BODY_CHUNK_SIZE = 65535  # what libmilter calls MILTER_CHUNK_SIZE
# Refused above this: a 1 MiB body chunk (SMFIP_MDS_1M) plus room for its header fields.
MAX_PACKET_SIZE = 1024 * 1024 + 1024
_LENGTH = struct.Struct("!I")


class MilterProtocolError(LocalProtocolError):
    """The peer broke the milter protocol (bad packet, unexpected or unnegotiated answer)."""


class Command(bytes, enum.Enum):
    """SMFIC_*: what the MTA sends."""

    ABORT = b"A"
    BODY = b"B"
    CONNECT = b"C"
    MACRO = b"D"
    EOM = b"E"
    HELO = b"H"
    QUIT_NC = b"K"
    HEADER = b"L"
    MAIL = b"M"
    EOH = b"N"
    OPTNEG = b"O"
    QUIT = b"Q"
    RCPT = b"R"
    DATA = b"T"
    UNKNOWN = b"U"


class Response(bytes, enum.Enum):
    """SMFIR_*: what the milter answers."""

    ADDRCPT = b"+"
    DELRCPT = b"-"
    ADDRCPT_PAR = b"2"
    SHUTDOWN = b"4"
    ACCEPT = b"a"
    REPLBODY = b"b"
    CONTINUE = b"c"
    DISCARD = b"d"
    CHGFROM = b"e"
    CONN_FAIL = b"f"
    ADDHEADER = b"h"
    INSHEADER = b"i"
    SETSYMLIST = b"l"
    CHGHEADER = b"m"
    PROGRESS = b"p"
    QUARANTINE = b"q"
    REJECT = b"r"
    SKIP = b"s"
    TEMPFAIL = b"t"
    REPLYCODE = b"y"
    OPTNEG = b"O"


class Action(enum.IntFlag):
    """SMFIF_*: the modifications a milter may make (negotiated)."""

    ADDHDRS = 0x01
    CHGBODY = 0x02
    ADDRCPT = 0x04
    DELRCPT = 0x08
    CHGHDRS = 0x10
    QUARANTINE = 0x20
    CHGFROM = 0x40
    ADDRCPT_PAR = 0x80
    SETSYMLIST = 0x100


ALL_ACTIONS = Action(0x1FF)


class Proto(enum.IntFlag):
    """SMFIP_*: stages a milter does not want (NO*), does not answer (NR_*), and extras."""

    NOCONNECT = 0x1
    NOHELO = 0x2
    NOMAIL = 0x4
    NORCPT = 0x8
    NOBODY = 0x10
    NOHDRS = 0x20
    NOEOH = 0x40
    NR_HDR = 0x80
    NOUNKNOWN = 0x100
    NODATA = 0x200
    SKIP = 0x400
    RCPT_REJ = 0x800
    NR_CONN = 0x1000
    NR_HELO = 0x2000
    NR_MAIL = 0x4000
    NR_RCPT = 0x8000
    NR_DATA = 0x10000
    NR_UNKN = 0x20000
    NR_EOH = 0x40000
    NR_BODY = 0x80000
    HDR_LEADSPC = 0x100000
    MDS_256K = 0x10000000
    MDS_1M = 0x20000000


# Everything but RCPT_REJ (we never send rejected recipients), HDR_LEADSPC (header values
# go without the space after the colon, as Postfix does) and the large-chunk sizes.
OFFERED_PROTOCOL = Proto(0x000FF7FF) & ~Proto.RCPT_REJ


class Stage(enum.Enum):
    """A point of the SMTP session a milter is told about."""

    CONNECT = "connect"
    HELO = "helo"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"
    UNKNOWN = "unknown"
    HEADER = "header"
    EOH = "eoh"
    BODY = "body"
    EOM = "eom"


class MacroStage(enum.IntEnum):
    """SMFIM_*: the stage numbers of the macro lists a milter may ask for."""

    CONNECT = 0
    HELO = 1
    MAIL = 2
    RCPT = 3
    DATA = 4
    EOM = 5
    EOH = 6


# The command that tells a milter about each stage (the fake milter reads it back).
STAGE_COMMAND = {
    Stage.CONNECT: Command.CONNECT,
    Stage.HELO: Command.HELO,
    Stage.MAIL: Command.MAIL,
    Stage.RCPT: Command.RCPT,
    Stage.DATA: Command.DATA,
    Stage.UNKNOWN: Command.UNKNOWN,
    Stage.HEADER: Command.HEADER,
    Stage.EOH: Command.EOH,
    Stage.BODY: Command.BODY,
    Stage.EOM: Command.EOM,
}
_STAGE_MACROS = {
    Stage.CONNECT: MacroStage.CONNECT,
    Stage.HELO: MacroStage.HELO,
    Stage.MAIL: MacroStage.MAIL,
    Stage.RCPT: MacroStage.RCPT,
    Stage.DATA: MacroStage.DATA,
    Stage.EOH: MacroStage.EOH,
    Stage.EOM: MacroStage.EOM,
}
_NOT_WANTED = {
    Stage.CONNECT: Proto.NOCONNECT,
    Stage.HELO: Proto.NOHELO,
    Stage.MAIL: Proto.NOMAIL,
    Stage.RCPT: Proto.NORCPT,
    Stage.DATA: Proto.NODATA,
    Stage.UNKNOWN: Proto.NOUNKNOWN,
    Stage.HEADER: Proto.NOHDRS,
    Stage.EOH: Proto.NOEOH,
    Stage.BODY: Proto.NOBODY,
}
# The SMFIP_NR_* flag by which a milter says it will not answer a stage.
NO_REPLY = {
    Stage.CONNECT: Proto.NR_CONN,
    Stage.HELO: Proto.NR_HELO,
    Stage.MAIL: Proto.NR_MAIL,
    Stage.RCPT: Proto.NR_RCPT,
    Stage.DATA: Proto.NR_DATA,
    Stage.UNKNOWN: Proto.NR_UNKN,
    Stage.HEADER: Proto.NR_HDR,
    Stage.EOH: Proto.NR_EOH,
    Stage.BODY: Proto.NR_BODY,
}


# --- messages --------------------------------------------------------------------------


class VerdictKind(enum.Enum):
    CONTINUE = "continue"
    ACCEPT = "accept"
    REJECT = "reject"
    TEMPFAIL = "tempfail"
    DISCARD = "discard"
    SKIP = "skip"  # only after a BODY chunk, when negotiated


# The one-byte answer for each verdict (a verdict with a reply text is SMFIR_REPLYCODE).
_VERDICT_RESPONSE = {
    VerdictKind.CONTINUE: Response.CONTINUE,
    VerdictKind.ACCEPT: Response.ACCEPT,
    VerdictKind.REJECT: Response.REJECT,
    VerdictKind.TEMPFAIL: Response.TEMPFAIL,
    VerdictKind.DISCARD: Response.DISCARD,
    VerdictKind.SKIP: Response.SKIP,
}
_RESPONSE_VERDICT = {response: kind for kind, response in _VERDICT_RESPONSE.items()}


@attrs.frozen
class Verdict:
    """A milter's answer to a stage; ``reply`` is the SMFIR_REPLYCODE text (no CRLF at end)."""

    kind: VerdictKind
    reply: str | None = None


@attrs.frozen
class Negotiate:
    """SMFIC_OPTNEG / SMFIR_OPTNEG; ``macros`` (answer only) maps a stage to macro names."""

    version: int
    actions: Action
    protocol: Proto
    macros: Mapping[MacroStage, tuple[str, ...]] = attrs.field(factory=dict)


@attrs.frozen
class AddHeader:
    name: str
    value: str


@attrs.frozen
class InsertHeader:
    index: int  # 0: before the first header
    name: str
    value: str


@attrs.frozen
class ChangeHeader:
    index: int  # 1-based among the headers of that name; an empty value deletes
    name: str
    value: str


@attrs.frozen
class ChangeSender:
    sender: str
    args: str | None = None


@attrs.frozen
class AddRecipient:
    recipient: str
    args: str | None = None  # SMFIR_ADDRCPT_PAR when not None


@attrs.frozen
class DeleteRecipient:
    recipient: str


@attrs.frozen
class ReplaceBody:
    chunk: bytes  # one piece; the new body is all the pieces in order


@attrs.frozen
class Quarantine:
    reason: str


Modification = (
    AddHeader
    | InsertHeader
    | ChangeHeader
    | ChangeSender
    | AddRecipient
    | DeleteRecipient
    | ReplaceBody
    | Quarantine
)
_MODIFICATION_ACTION: dict[type[Modification], Action] = {
    AddHeader: Action.ADDHDRS,
    InsertHeader: Action.ADDHDRS,
    ChangeHeader: Action.CHGHDRS,
    ChangeSender: Action.CHGFROM,
    AddRecipient: Action.ADDRCPT,
    DeleteRecipient: Action.DELRCPT,
    ReplaceBody: Action.CHGBODY,
    Quarantine: Action.QUARANTINE,
}


@attrs.frozen
class Progress:
    """SMFIR_PROGRESS: the milter is still working (resets the timeout)."""


MilterAnswer = Verdict | Negotiate | Modification | Progress


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
        case Verdict(kind=kind, reply=reply):
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
        return Verdict(kind)
    match response:
        case Response.REPLYCODE:
            (text,) = _split_cstrings(payload, 1)
            if len(text) < 3 or not text[:3].isdigit() or text[0] not in "45":
                raise MilterProtocolError(f"milter reply is not a 4xx/5xx reply: {text!r}")
            if len(text) > 3 and text[3] not in " -":
                raise MilterProtocolError(f"milter reply is malformed: {text!r}")
            kind = VerdictKind.TEMPFAIL if text[0] == "4" else VerdictKind.REJECT
            return Verdict(kind, text)
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
    return Negotiate(version, Action(actions & 0xFFFFFFFF), Proto(protocol), macros)


# MTA commands, as the fake milter sees them.
@attrs.frozen
class MtaCommand:
    """A decoded SMFIC_* packet: ``args`` are its strings, ``data`` its raw bytes."""

    command: Command
    args: tuple[str, ...] = ()
    data: bytes = b""
    macros: Mapping[str, str] = attrs.field(factory=dict)  # SMFIC_MACRO only
    macro_for: bytes = b""  # SMFIC_MACRO only: the command the macros are for
    port: int = 0  # SMFIC_CONNECT only
    family: str = ""  # SMFIC_CONNECT only: "4", "6", "L" or "U"
    negotiate: Negotiate | None = None  # SMFIC_OPTNEG only


def encode_command(command: Command, *args: str, data: bytes = b"") -> bytes:
    """An SMFIC_* packet whose payload is ``args`` as C strings, then ``data``."""
    return packet(command.value, b"".join(_cstr(a) for a in args) + data)


def decode_command(code: bytes, payload: bytes) -> MtaCommand:
    """Decode one packet from an MTA (for the fake milter). Raises MilterProtocolError."""
    try:
        command = Command(code)
    except ValueError:
        raise MilterProtocolError(f"unknown milter command {code!r}") from None
    match command:
        case Command.OPTNEG:
            return MtaCommand(command, negotiate=_decode_optneg(payload, answer=False))
        case Command.MACRO:
            if not payload:
                raise MilterProtocolError("macro packet without a command")
            parts = _split_cstrings(payload[1:])
            if len(parts) % 2:
                raise MilterProtocolError("macro packet with a name but no value")
            macros = dict(zip(parts[0::2], parts[1::2], strict=True))
            return MtaCommand(command, macros=macros, macro_for=payload[:1])
        case Command.CONNECT:
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
        case Command.BODY | Command.EOM | Command.UNKNOWN:
            return MtaCommand(command, data=payload)
        case Command.HEADER:
            return MtaCommand(command, tuple(_split_cstrings(payload, 2)))
        case _:
            return MtaCommand(command, tuple(_split_cstrings(payload)))


def encode_connect(hostname: str, family: str, port: int, address: str) -> bytes:
    """SMFIC_CONNECT; family is "4", "6", "L" (unix socket) or "U" (unknown)."""
    payload = _cstr(hostname) + family.encode("ascii")
    if family != "U":
        payload += _PORT.pack(port) + _cstr(address)
    return packet(Command.CONNECT.value, payload)


def encode_macros(command: Command, macros: Iterable[tuple[str, str]]) -> bytes:
    payload = command.value + b"".join(_cstr(n) + _cstr(v) for n, v in macros)
    return packet(Command.MACRO.value, payload)


def encode_optneg(version: int, actions: Action, protocol: Proto) -> bytes:
    return packet(Command.OPTNEG.value, _OPTNEG.pack(version, int(actions), int(protocol)))


# --- the MTA side state machine ---------------------------------------------------------


# Responses a milter may give at each stage (besides PROGRESS, and modifications at EOM).
_ALLOWED = {
    Stage.CONNECT: {VerdictKind.CONTINUE, VerdictKind.ACCEPT, VerdictKind.REJECT,
                    VerdictKind.TEMPFAIL, VerdictKind.DISCARD},
    Stage.BODY: set(VerdictKind),
}  # fmt: skip
_DEFAULT_ALLOWED = set(VerdictKind) - {VerdictKind.SKIP}


class MilterSession:
    """One milter for one SMTP connection, MTA side: bytes out for each stage, answers in.

    Use: ``negotiate()`` → send, ``receive()`` until it returns the Negotiate; then per
    stage ``stage(...)`` → bytes to send (``b""`` when the milter asked not to get the
    stage) and, if ``awaiting`` is set, ``receive()`` until a Verdict. At EOM ``receive``
    also returns the modifications, in order, before the final Verdict.
    """

    def __init__(self, actions: Action = ALL_ACTIONS, protocol: Proto = OFFERED_PROTOCOL) -> None:
        self.offered_actions = actions
        self.offered_protocol = protocol
        self.actions = Action(0)
        self.protocol = Proto(0)
        self.version = 0
        self.macro_names: Mapping[MacroStage, tuple[str, ...]] = {}
        self.awaiting: Stage | None = None
        self._negotiating = False
        self._decoder = PacketDecoder()
        self._packets: list[tuple[bytes, bytes]] = []
        self.negotiated = False
        self.skipping_body = False

    def negotiate(self) -> bytes:
        self._negotiating = True
        return encode_optneg(VERSION, self.offered_actions, self.offered_protocol)

    def wants(self, stage: Stage) -> bool:
        """Does the milter want to be told about this stage at all?"""
        flag = _NOT_WANTED.get(stage)
        if stage is Stage.BODY and self.skipping_body:
            return False
        return flag is None or not self.protocol & flag

    def _answers(self, stage: Stage) -> bool:
        flag = NO_REPLY.get(stage)
        return flag is None or not self.protocol & flag

    def _macros(self, stage: Stage, macros: Mapping[str, str]) -> bytes:
        macro_stage = _STAGE_MACROS.get(stage)
        if macro_stage is None or not macros:
            return b""
        wanted = self.macro_names.get(macro_stage)
        items = [(n, v) for n, v in macros.items() if wanted is None or n in wanted]
        if not items:
            return b""
        return encode_macros(STAGE_COMMAND[stage], items)

    def stage(
        self,
        stage: Stage,
        *args: str,
        data: bytes = b"",
        macros: Mapping[str, str] | None = None,
        connect: tuple[str, str, int, str] | None = None,
    ) -> bytes:
        """Bytes to send for a stage; sets ``awaiting`` when an answer must be read."""
        if not self.negotiated:
            raise MilterProtocolError("stage before option negotiation")
        if self.awaiting is not None:
            raise MilterProtocolError(f"stage {stage.value} while awaiting {self.awaiting.value}")
        if not self.wants(stage):
            return b""
        out = self._macros(stage, macros or {})
        if stage is Stage.CONNECT:
            assert connect is not None
            out += encode_connect(*connect)
        else:
            out += encode_command(STAGE_COMMAND[stage], *args, data=data)
        if self._answers(stage):
            self.awaiting = stage
        return out

    def abort(self) -> bytes:
        """SMFIC_ABORT (no answer): the message is over, the connection goes on."""
        self.awaiting = None
        self.skipping_body = False
        return packet(Command.ABORT.value)

    def quit(self) -> bytes:
        self.awaiting = None
        return packet(Command.QUIT.value)

    def receive(self, data: bytes) -> list[MilterAnswer]:
        """Feed bytes from the milter; return the answers they complete (validated)."""
        self._packets.extend(self._decoder.feed(data))
        answers: list[MilterAnswer] = []
        while self._packets:
            code, payload = self._packets.pop(0)
            answer = decode_response(code, payload)
            answers.append(self._check(answer))
            if isinstance(answer, Verdict | Negotiate):
                break  # anything after the final answer is a protocol error
        if self._packets or (answers and self._decoder.pending and self.awaiting is None):
            raise MilterProtocolError("milter sent data nobody asked for")
        return answers

    def _check(self, answer: MilterAnswer) -> MilterAnswer:
        if self._negotiating:
            if not isinstance(answer, Negotiate):
                raise MilterProtocolError(f"expected option negotiation, got {answer!r}")
            self._accept_negotiation(answer)
            return answer
        stage = self.awaiting
        if stage is None:
            raise MilterProtocolError(f"unexpected {answer!r}")
        if isinstance(answer, Progress):
            return answer
        if isinstance(answer, Negotiate):
            raise MilterProtocolError("option negotiation in the middle of a session")
        if isinstance(answer, Verdict):
            allowed = _ALLOWED.get(stage, _DEFAULT_ALLOWED)
            if answer.kind not in allowed or (
                answer.kind is VerdictKind.SKIP and not self.protocol & Proto.SKIP
            ):
                raise MilterProtocolError(f"{answer.kind.value} is not allowed at {stage.value}")
            self.awaiting = None
            if answer.kind is VerdictKind.SKIP:
                self.skipping_body = True
            return answer
        if stage is not Stage.EOM:
            raise MilterProtocolError(f"modification {answer!r} before end of message")
        needed = _MODIFICATION_ACTION[type(answer)]
        if isinstance(answer, AddRecipient) and answer.args is not None:
            needed = Action.ADDRCPT_PAR
        if not self.actions & needed:
            raise MilterProtocolError(f"modification {answer!r} was not negotiated")
        return answer

    def _accept_negotiation(self, answer: Negotiate) -> None:
        if answer.version < 2 or answer.version > VERSION:
            raise MilterProtocolError(f"milter protocol version {answer.version} not supported")
        extra_actions = int(answer.actions) & ~int(self.offered_actions)
        if extra_actions:
            raise MilterProtocolError(f"milter wants actions not offered: {extra_actions:#x}")
        extra = int(answer.protocol) & ~int(self.offered_protocol)
        if extra:
            raise MilterProtocolError(f"milter wants protocol steps not offered: {extra:#x}")
        self.version = answer.version
        self.actions = answer.actions
        self.protocol = answer.protocol
        self.macro_names = answer.macros
        self._negotiating = False
        self.negotiated = True


def split_body(chunks: Iterable[bytes], size: int = BODY_CHUNK_SIZE) -> Iterable[bytes]:
    """Re-cut a stream of chunks into pieces of at most ``size`` bytes (SMFIC_BODY)."""
    for chunk in chunks:
        for start in range(0, len(chunk), size):
            yield chunk[start : start + size]


def mail_args(address: str, params: Sequence[str]) -> tuple[str, ...]:
    """SMFIC_MAIL/RCPT strings: ``<address>`` then each ESMTP parameter."""
    return (address if address.startswith("<") else f"<{address}>", *params)
